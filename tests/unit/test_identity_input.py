"""Identity input: identify and alias events, and the anonymous id an event carries beside
a known one (docs/identity.md), in every input shape, and what is dead-lettered."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import errors
from schemas.adapters import decode_json, detect, to_event
from schemas.errors import InvalidEvent
from schemas.events import (
    IDENTITY_NEEDS_ANONYMOUS_ID,
    IDENTITY_NEEDS_TWO_IDS,
    Event,
    derive_event_id,
)
from stream.core.detectors.session import OUTSIDE_VISITS, Sessions
from stream.core.ingest import IngestLimits, RawRecord, ingest_batch

TS = "2026-11-23T10:00:00Z"
TS_UTC = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
MICROS = 1_795_428_000_000_000  # TS_UTC in microseconds since the epoch


def reject(obj: dict[str, Any]) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as exc:
        decode_json(json.dumps(obj))
    return exc.value


def segment(call: str, **fields: Any) -> dict[str, Any]:
    return {"type": call, "messageId": "msg-1", "timestamp": TS, **fields}


def track(**fields: Any) -> dict[str, Any]:
    return segment("track", event="Product Viewed", properties={"product_id": "P-1"}, **fields)


def ga4(**ids: Any) -> dict[str, Any]:
    """A BigQuery export row with the given user ids (no event id: it is derived)."""
    return {"event_name": "view_item", "event_timestamp": str(MICROS), **ids,
            "items": [{"item_id": "CBL-USB-C", "price": 19.9}]}  # fmt: skip


def gtag(**ids: Any) -> dict[str, Any]:
    """A Measurement Protocol / gtag event with the given user ids."""
    return {"event_name": "add_to_cart", "timestamp_micros": MICROS, **ids,
            "params": {"ga_session_id": "1795427000"}}  # fmt: skip


def ids(event: Event) -> tuple[str, str | None, bool | None]:
    return event.shopper_id, event.anonymous_id, event.identified


# --- Segment identify and alias -----------------------------------------------------------


def test_segment_identify_with_both_ids_is_an_identify_event() -> None:
    call = segment("identify", userId="u-1", anonymousId="anon-7", traits={"email": "a@b.c"})

    event = decode_json(json.dumps(call))

    assert detect(call) == "segment"
    assert (event.type, event.source, event.event_id) == ("identify", "segment", "msg-1")
    assert ids(event) == ("u-1", "anon-7", True)
    assert event.ts == TS_UTC
    assert event.properties == {}  # traits (an email, a name) are not kept


@pytest.mark.parametrize(
    ("call", "missing"),
    [
        (segment("identify", userId="u-1", traits={"plan": "pro"}), "anonymousId"),
        (segment("identify", userId="u-1", anonymousId=None), "anonymousId"),
        (segment("identify", userId="u-1", anonymousId="   "), "anonymousId"),
        (segment("identify", anonymousId="anon-7", traits={"plan": "pro"}), "userId"),
        (segment("identify", userId="", anonymousId="anon-7"), "userId"),
    ],
    ids=["user-only", "anonymous-null", "anonymous-blank", "anonymous-only", "user-empty"],
)
def test_segment_identify_without_both_ids_links_nothing(
    call: dict[str, Any], missing: str
) -> None:
    exc = reject(call)

    assert exc.reason == errors.UNSUPPORTED_EVENT_TYPE
    assert exc.detail == f"a Segment identify without {missing} links nothing"


def test_segment_identify_of_one_id_with_itself_is_invalid() -> None:
    exc = reject(segment("identify", userId="u-1", anonymousId=" u-1"))

    assert (exc.reason, exc.detail) == (errors.INVALID_EVENT, IDENTITY_NEEDS_TWO_IDS)


@pytest.mark.parametrize("anonymous", [None, "anon-7"])
def test_segment_alias_merges_the_previous_id_into_the_user_id(anonymous: str | None) -> None:
    # analytics.js sends its anonymousId on an alias too: previousId is what the call links
    call = segment("alias", userId="u-1", previousId="u-old", anonymousId=anonymous)

    event = decode_json(json.dumps(call))

    assert (event.type, event.source, event.event_id) == ("alias", "segment", "msg-1")
    assert ids(event) == ("u-1", "u-old", True)


@pytest.mark.parametrize("previous", [None, "", "  "])
def test_segment_alias_without_a_previous_id_is_invalid(previous: str | None) -> None:
    call = segment("alias", userId="u-1", anonymousId="anon-7")
    if previous is not None:
        call["previousId"] = previous

    exc = reject(call)

    assert exc.reason == errors.INVALID_EVENT
    assert exc.detail == "a Segment alias call needs a previousId, the id it merges into userId"


def test_segment_alias_without_a_user_id_has_no_shopper() -> None:
    exc = reject(segment("alias", previousId="u-old", anonymousId="anon-7"))

    assert exc.reason == errors.MISSING_SHOPPER_ID
    assert exc.detail == "a Segment alias call needs a userId, the id it merges previousId into"


def test_segment_alias_of_one_id_with_itself_is_invalid() -> None:
    exc = reject(segment("alias", userId="u-1", previousId="u-1"))

    assert (exc.reason, exc.detail) == (errors.INVALID_EVENT, IDENTITY_NEEDS_TWO_IDS)


def test_segment_group_calls_stay_unsupported() -> None:
    exc = reject(segment("group", userId="u-1", anonymousId="anon-7", groupId="g-1"))

    assert exc.reason == errors.UNSUPPORTED_EVENT_TYPE
    assert exc.detail == "Segment 'group' calls are not events"


# --- Segment track and page calls with both ids -------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"userId": "u-1", "anonymousId": "anon-7"}, ("u-1", "anon-7", True)),
        ({"userId": "u-1"}, ("u-1", None, True)),
        ({"userId": None, "anonymousId": "anon-7"}, ("anon-7", None, None)),
        ({"anonymousId": "anon-7"}, ("anon-7", None, None)),
        ({"userId": "u-1", "anonymousId": " u-1 "}, ("u-1", None, True)),
        ({"userId": 42, "anonymousId": "42"}, ("42", None, True)),
        ({"userId": "u-1", "anonymousId": 7}, ("u-1", "7", True)),
    ],
    ids=["both", "user-only", "user-null", "anonymous-only", "same-id", "same-number",
         "numeric-anonymous"],
)  # fmt: skip
@pytest.mark.parametrize("call", ["track", "page"])
def test_segment_events_keep_the_anonymous_id_beside_the_user_id(
    call: str, given: dict[str, Any], expected: tuple[str, str | None, bool | None]
) -> None:
    obj = track(**given) if call == "track" else segment("page", name="Returns", **given)

    event = decode_json(json.dumps(obj))

    assert event.type == ("product_view" if call == "track" else "page_view")
    assert ids(event) == expected


@pytest.mark.parametrize(
    "anonymous", ["", "   ", "a" * 257, {"id": "anon-7"}, ["anon-7"], True, 1.5]
)
def test_an_event_is_never_refused_for_the_anonymous_id_beside_its_shopper(
    anonymous: Any,
) -> None:
    event = decode_json(json.dumps(track(userId="u-1", anonymousId=anonymous)))

    assert ids(event) == ("u-1", None, True)


# --- GA4 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (ga4(user_id="known-1", user_pseudo_id="1234567.89"), ("known-1", "1234567.89", True)),
        (gtag(user_id="known-1", client_id="555.666"), ("known-1", "555.666", True)),
        (ga4(user_id="known-1"), ("known-1", None, True)),
        (ga4(user_id="", user_pseudo_id="1234567.89"), ("1234567.89", None, None)),
        (ga4(user_pseudo_id="1234567.89"), ("1234567.89", None, None)),
        (gtag(client_id="555.666"), ("555.666", None, None)),
        (gtag(user_id="555.666", client_id="555.666"), ("555.666", None, True)),
        (gtag(user_id=42, client_id="42"), ("42", None, True)),
    ],
    ids=["bigquery-both", "gtag-both", "user-only", "user-empty", "pseudo-only",
         "client-only", "same-id", "same-number"],
)  # fmt: skip
def test_ga4_keeps_the_pseudo_or_client_id_beside_the_user_id(
    given: dict[str, Any], expected: tuple[str, str | None, bool | None]
) -> None:
    event = decode_json(json.dumps(given))

    assert event.source == "ga4"
    assert ids(event) == expected


# --- event ids ----------------------------------------------------------------------------

# The ids these inputs were given before they carried `anonymous_id` and `identified`:
# an event's id must not change because its anonymous id is kept now.
KNOWN_IDS = [
    (track(userId="u-1", anonymousId="anon-7", messageId=None),
     "904bf1b7218cbe43e5c0e1b042a19320"),
    (segment("page", userId="u-1", anonymousId="anon-7", messageId=None,
             properties={"url": "https://shop.example/returns"}),
     "ac24e905017a1ce9294131f29f2ac960"),
    (ga4(user_id="known-1", user_pseudo_id="1234567.89"), "bbfe7803f818c6ad432be387de379082"),
    (gtag(user_id="known-1", client_id="555.666"), "293b66ea80e5ef80eda45db05553fddc"),
    ({"shopper_id": "u-1", "anonymous_id": "anon-7", "type": "page_view", "ts": TS},
     "291edb26abff976d4b7da548b4c15b16"),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "event_id"), KNOWN_IDS, ids=["track", "page", "bigquery",
                                                               "gtag", "canonical"])  # fmt: skip
def test_event_ids_of_existing_inputs_do_not_change(obj: dict[str, Any], event_id: str) -> None:
    event = decode_json(json.dumps(obj))

    assert event.anonymous_id is not None
    assert event.event_id == event_id


def test_an_events_id_is_the_same_with_or_without_the_anonymous_id_beside_it() -> None:
    with_both = decode_json(json.dumps(track(userId="u-1", anonymousId="anon-7", messageId=None)))
    user_only = decode_json(json.dumps(track(userId="u-1", messageId=None)))
    bigquery = decode_json(json.dumps(ga4(user_id="known-1", user_pseudo_id="1234567.89")))
    known_only = decode_json(json.dumps(ga4(user_id="known-1")))

    assert with_both.anonymous_id == "anon-7" and user_only.anonymous_id is None
    assert with_both.event_id == user_only.event_id
    assert bigquery.event_id == known_only.event_id
    assert Event.model_validate_json(with_both.to_json()) == with_both  # the intent.events hop


def test_identify_events_that_link_different_ids_have_different_ids() -> None:
    one = decode_json(json.dumps(segment("identify", userId="u-1", anonymousId="a-1",
                                         messageId=None)))  # fmt: skip
    two = decode_json(json.dumps(segment("identify", userId="u-1", anonymousId="a-2",
                                         messageId=None)))  # fmt: skip

    assert one.event_id != two.event_id
    assert one.event_id == derive_event_id(one)


# --- canonical ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["identify", "alias"])
def test_canonical_identify_and_alias_are_taken_as_they_are(kind: str) -> None:
    obj = {"shopper_id": "u-1", "anonymous_id": "anon-7", "type": kind, "ts": TS,
           "identified": True, "messageId": "m-1"}  # fmt: skip

    event = decode_json(json.dumps(obj))

    assert detect(obj) == "canonical"
    assert (event.type, event.source) == (kind, "canonical")
    assert ids(event) == ("u-1", "anon-7", True)
    assert Event.model_validate_json(event.to_json()) == event  # the intent.events hop


@pytest.mark.parametrize("kind", ["identify", "alias"])
@pytest.mark.parametrize(
    ("anonymous", "detail"),
    [
        (None, IDENTITY_NEEDS_ANONYMOUS_ID),
        ("", IDENTITY_NEEDS_ANONYMOUS_ID),
        ("  ", IDENTITY_NEEDS_ANONYMOUS_ID),
        ("u-1", IDENTITY_NEEDS_TWO_IDS),
        (" u-1 ", IDENTITY_NEEDS_TWO_IDS),
    ],
    ids=["missing", "empty", "blank", "same", "same-padded"],
)
def test_canonical_identify_and_alias_need_an_other_anonymous_id(
    kind: str, anonymous: str | None, detail: str
) -> None:
    obj: dict[str, Any] = {"shopper_id": "u-1", "type": kind, "ts": TS}
    if anonymous is not None:
        obj["anonymous_id"] = anonymous

    exc = reject(obj)

    assert (exc.reason, exc.detail) == (errors.INVALID_EVENT, detail)


def test_canonical_identify_given_a_list_as_type_is_invalid_not_a_crash() -> None:
    exc = reject({"shopper_id": "u-1", "anonymous_id": "a", "type": ["identify"], "ts": TS})

    assert exc.reason == errors.INVALID_EVENT


# --- the ingest path ----------------------------------------------------------------------


def test_identity_inputs_through_ingest_pass_or_are_dead_lettered_with_their_reason() -> None:
    now = datetime(2026, 11, 23, 10, 1, tzinfo=UTC)
    values = [
        segment("identify", userId="u-1", anonymousId="anon-7"),
        segment("alias", userId="u-1", previousId="u-old"),
        {"shopper_id": "u-1", "anonymous_id": "anon-8", "type": "identify", "ts": TS},
        track(userId="u-1", anonymousId="anon-9"),
        segment("identify", userId="u-1"),
        segment("identify", userId="u-1", anonymousId="u-1"),
        segment("alias", userId="u-1"),
        {"shopper_id": "u-1", "type": "identify", "ts": TS},
        {"shopper_id": "u-1", "anonymous_id": "u-1", "type": "alias", "ts": TS},
    ]
    records = [
        RawRecord(value=json.dumps(v).encode(), key=b"u-1", topic="t", offset=n)
        for n, v in enumerate(values)
    ]

    result = ingest_batch(records, now, IngestLimits())

    assert [(e.type, e.anonymous_id) for e in result.events] == [
        ("identify", "anon-7"),
        ("alias", "u-old"),
        ("identify", "anon-8"),
        ("product_view", "anon-9"),
    ]
    assert [(r.record.offset, r.reason, r.detail) for r in result.rejected] == [
        (4, errors.UNSUPPORTED_EVENT_TYPE, "a Segment identify without anonymousId links nothing"),
        (5, errors.INVALID_EVENT, IDENTITY_NEEDS_TWO_IDS),
        (6, errors.INVALID_EVENT,
         "a Segment alias call needs a previousId, the id it merges into userId"),
        (7, errors.INVALID_EVENT, IDENTITY_NEEDS_ANONYMOUS_ID),
        (8, errors.INVALID_EVENT, IDENTITY_NEEDS_TWO_IDS),
    ]  # fmt: skip
    letter = json.loads(result.rejected[0].dead_letter(now))
    assert (letter["reason"], letter["detail"]) == (errors.UNSUPPORTED_EVENT_TYPE,
                                                    result.rejected[0].detail)  # fmt: skip


def test_an_identify_event_as_json_is_not_taken_for_segment_by_its_message_id() -> None:
    obj = {"shopper_id": "u-1", "anonymous_id": "a", "type": "alias", "ts": TS, "messageId": "m"}
    call = {"type": "alias", "previousId": "a", "timestamp": TS}

    assert detect(obj) == "canonical"
    assert detect(call) == "segment"
    assert to_event(obj).source == "canonical"


# --- visits -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["identify", "alias"])
def test_identify_and_alias_events_are_outside_visits(kind: str) -> None:
    event = Event(shopper_id="u-1", anonymous_id="anon-7", type=kind, ts=TS_UTC, session_id="v")
    state: dict[str, Any] = {}

    visit, fired = Sessions([], gap=1800).assign(state, event, TS_UTC.timestamp())

    assert kind in OUTSIDE_VISITS
    assert (visit, fired, state) == ("v", [], {})


# --- the document -------------------------------------------------------------------------

DOC = Path(__file__).parents[2] / "docs" / "identity.md"


def doc_examples() -> list[str]:
    """The JSON examples of docs/identity.md's input section, one object a record."""
    text = DOC.read_text(encoding="utf-8").split("## Identity input", 1)[1]
    section = re.split(r"^## ", text, flags=re.M)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    return [obj for block in blocks for obj in re.split(r"\n(?=\{)", block.strip())]


def test_the_documents_examples_link_the_ids_they_say() -> None:
    events = [decode_json(example) for example in doc_examples()]

    assert [(e.source, e.type, e.shopper_id, e.anonymous_id) for e in events] == [
        ("segment", "identify", "u-1", "anon-7"),
        ("segment", "alias", "u-1", "u-old"),
        ("segment", "product_view", "u-1", "anon-7"),
        ("ga4", "product_view", "u-1", "1234567.89"),
        ("ga4", "add_to_cart", "u-1", "555.666"),
        ("snowplow", "page_view", "jon.doe@email.com", "bc2e92ec6c204a14"),
        ("canonical", "identify", "u-1", "anon-7"),
        ("canonical", "alias", "u-1", "u-old"),
        ("canonical", "product_view", "u-1", "anon-7"),
    ]
