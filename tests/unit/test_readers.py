"""Line parsers of every file format, and `stream.offline.files.read_events` on real samples."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas import errors
from schemas.errors import InvalidEvent
from schemas.events import Event, Product
from schemas.readers import FORMATS
from stream.errors import ConfigError
from stream.offline.files import PROGRESS_EVERY_LINES, LineError, get_format, read_events

REES46_FILE = "rees46_2019-10-01_head.csv.gz"
TAOBAO_FILE = "taobao_userbehavior_2017-11-26.csv.gz"
OTTO_FILE = "otto_20_sessions.jsonl.gz"

REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
REES46_VIEW = (
    "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,"
    "541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c"
)
REES46_CART = (
    "2019-10-01 00:00:05 UTC,cart,3900821,2053013552326770905,"
    "appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd"
)
RETAILROCKET_HEADER = "timestamp,visitorid,event,itemid,transactionid"
TAOBAO_PV = "1,2268318,2520377,pv,1511661600"


def parse(fmt: str, line: str) -> list[Event]:
    return FORMATS[fmt].parse(line)


def parse_error(fmt: str, line: str) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as exc:
        parse(fmt, line)
    return exc.value


def split(items: list[Event | LineError]) -> tuple[list[Event], list[LineError]]:
    events = [item for item in items if isinstance(item, Event)]
    failures = [item for item in items if isinstance(item, LineError)]
    assert len(events) + len(failures) == len(items)
    return events, failures


def write(path: Path, lines: list[str], *, gz: bool = False, newline: str = "\n") -> Path:
    data = "".join(line + newline for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_formats_are_the_documented_ones() -> None:
    assert sorted(FORMATS) == [
        "auto",
        "canonical",
        "ga4",
        "otto",
        "rees46",
        "retailrocket",
        "segment",
        "snowplow",
        "taobao",
    ]
    assert {name: spec.name for name, spec in FORMATS.items()} == {n: n for n in FORMATS}
    assert FORMATS["rees46"].header == "event_time,"
    assert FORMATS["retailrocket"].header == "timestamp,"
    assert FORMATS["taobao"].header is None


# --- RetailRocket -------------------------------------------------------------------------


def test_retailrocket_view() -> None:
    [event] = parse("retailrocket", "1433221332117,257597,view,355908,\n")

    assert event.type == "product_view"
    assert event.shopper_id == "257597"
    assert event.ts == datetime(2015, 6, 2, 5, 2, 12, 117000, tzinfo=UTC)
    assert event.product == Product(sku="355908")
    assert event.properties == {}
    assert event.session_id is None
    assert event.source == "retailrocket"


def test_retailrocket_transaction() -> None:
    [event] = parse("retailrocket", "1433224214164,992329,transaction,248676,12345")

    assert event.type == "purchase"
    assert event.shopper_id == "992329"
    assert event.ts == datetime(2015, 6, 2, 5, 50, 14, 164000, tzinfo=UTC)
    assert event.product == Product(sku="248676")
    assert event.properties == {"transaction_id": "12345"}


def test_retailrocket_addtocart_and_crlf() -> None:
    [event] = parse("retailrocket", "1433221332117,257597,addtocart,355908,\r\n")

    assert event.type == "add_to_cart"
    assert event.properties == {}


# --- REES46 -------------------------------------------------------------------------------


def test_rees46_view_with_empty_category_code_uses_the_id() -> None:
    [event] = parse("rees46", REES46_VIEW)

    assert event.type == "product_view"
    assert event.shopper_id == "541312140"
    assert event.session_id == "72d76fde-8bb3-4e00-8c23-a032dfed738c"
    assert event.ts == datetime(2019, 10, 1, 0, 0, 0, tzinfo=UTC)
    assert event.product == Product(
        sku="44600062", category="2103807459595387724", brand="shiseido", price=35.79
    )
    assert event.source == "rees46"


def test_rees46_cart_with_category_code() -> None:
    [event] = parse("rees46", REES46_CART + "\n")

    assert event.type == "add_to_cart"
    assert event.ts == datetime(2019, 10, 1, 0, 0, 5, tzinfo=UTC)
    assert event.product == Product(
        sku="3900821", category="appliances/environment/water_heater", brand="aqua", price=33.2
    )


@pytest.mark.parametrize(
    ("kind", "canonical"),
    [("purchase", "purchase"), ("remove_from_cart", "remove_from_cart")],
)
def test_rees46_empty_optional_fields(kind: str, canonical: str) -> None:
    [event] = parse("rees46", f"2019-10-01 02:00:00 UTC,{kind},1,2,,,,3,")

    assert event.type == canonical
    assert event.session_id is None
    assert event.product == Product(sku="1", category="2")


# --- Taobao -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behavior", "kind"),
    [("pv", "product_view"), ("cart", "add_to_cart"), ("fav", "wishlist_add"), ("buy", "purchase")],
)
def test_taobao_behaviors(behavior: str, kind: str) -> None:
    [event] = parse("taobao", f"1,2268318,2520377,{behavior},1511661600")

    assert event.type == kind
    assert event.shopper_id == "1"
    assert event.ts == datetime(2017, 11, 26, 2, 0, tzinfo=UTC)
    assert event.product == Product(sku="2268318", category="2520377")
    assert event.source == "taobao"


# --- OTTO ---------------------------------------------------------------------------------


def test_otto_session_line_gives_one_event_per_entry() -> None:
    line = json.dumps(
        {
            "session": 7,
            "events": [
                {"aid": 1517085, "ts": 1659304800025, "type": "clicks"},
                {"aid": 42, "ts": 1659304860000, "type": "carts"},
                {"aid": 42, "ts": 1659304900000, "type": "orders"},
            ],
        }
    )

    events = parse("otto", line)

    assert [e.type for e in events] == ["product_view", "add_to_cart", "purchase"]
    assert {e.shopper_id for e in events} == {"7"}
    assert [e.product for e in events] == [
        Product(sku="1517085"),
        Product(sku="42"),
        Product(sku="42"),
    ]
    assert events[0].ts == datetime(2022, 7, 31, 22, 0, 0, 25000, tzinfo=UTC)
    assert {e.session_id for e in events} == {None}
    assert {e.source for e in events} == {"otto"}
    assert len({e.id for e in events}) == 3


def test_otto_session_without_events() -> None:
    assert parse("otto", '{"session": 7, "events": []}') == []


# --- JSON Lines formats -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["canonical", "auto"])
def test_canonical_json_line(fmt: str) -> None:
    line = '{"shopper_id": "s", "type": "signup", "ts": "2026-11-23T10:00:00Z"}\n'

    [event] = parse(fmt, line)

    assert (event.shopper_id, event.type, event.source) == ("s", "signup", "canonical")


@pytest.mark.parametrize("fmt", ["segment", "auto"])
def test_segment_json_line(fmt: str) -> None:
    line = json.dumps(
        {"type": "track", "event": "Product Added", "userId": "u", "timestamp": "2026-11-23T10:00Z",
         "properties": {"product_id": "P"}}
    )  # fmt: skip

    [event] = parse(fmt, line)

    assert (event.shopper_id, event.type, event.source) == ("u", "add_to_cart", "segment")


@pytest.mark.parametrize("fmt", ["ga4", "auto"])
def test_ga4_json_line(fmt: str) -> None:
    line = json.dumps(
        {
            "event_name": "begin_checkout",
            "user_pseudo_id": "p",
            "event_timestamp": "1795428000000000",
        }
    )

    [event] = parse(fmt, line)

    assert (event.shopper_id, event.type, event.source) == ("p", "checkout_started", "ga4")
    assert event.ts == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


# --- malformed lines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "line", "reason", "detail"),
    [
        # wrong field count
        ("retailrocket", "1433221332117,257597,view,355908", errors.MALFORMED_LINE,
         "retailrocket: expected 5 fields, got 4 (truncated line?)"),
        ("retailrocket", "1433221332117,257597,view,355908,,", errors.MALFORMED_LINE,
         "retailrocket: expected 5 fields, got 6 (truncated line?)"),
        ("rees46", REES46_VIEW.rsplit(",", 1)[0], errors.MALFORMED_LINE,
         "rees46: expected 9 fields, got 8 (truncated line?)"),
        ("taobao", "1,2268318,2520377,pv", errors.MALFORMED_LINE,
         "taobao: expected 5 fields, got 4 (truncated line?)"),
        ("taobao", "", errors.MALFORMED_LINE, "taobao: expected 5 fields, got 0 (truncated line?)"),
        # bad timestamp
        ("retailrocket", "yesterday,257597,view,355908,", errors.MALFORMED_LINE,
         "retailrocket: bad timestamp 'yesterday'"),
        ("retailrocket", "1433221332117.5,257597,view,355908,", errors.MALFORMED_LINE,
         "retailrocket: bad timestamp '1433221332117.5'"),
        ("rees46", REES46_VIEW.replace("2019-10-01 00:00:00 UTC", "2019/10/01 00:00"),
         errors.MALFORMED_LINE, "rees46: bad event_time '2019/10/01 00:00'"),
        ("rees46", REES46_VIEW.replace("2019-10-01 00:00:00 UTC", "2019-13-01 00:00:00 UTC"),
         errors.MALFORMED_LINE, "rees46: bad event_time '2019-13-01 00:00:00 UTC'"),
        ("taobao", "1,2268318,2520377,pv,soon", errors.MALFORMED_LINE,
         "taobao: bad timestamp 'soon'"),
        ("taobao", "1,2268318,2520377,pv,99999999999999999999", errors.MALFORMED_LINE,
         "taobao: bad timestamp '99999999999999999999'"),
        # unknown event type
        ("retailrocket", "1433221332117,257597,click,355908,", errors.UNSUPPORTED_EVENT_TYPE,
         "retailrocket: event 'click'"),
        ("rees46", REES46_VIEW.replace(",view,", ",wishlist,"), errors.UNSUPPORTED_EVENT_TYPE,
         "rees46: event_type 'wishlist'"),
        ("rees46", REES46_HEADER, errors.UNSUPPORTED_EVENT_TYPE, "rees46: event_type 'event_type'"),
        ("taobao", "1,2268318,2520377,like,1511661600", errors.UNSUPPORTED_EVENT_TYPE,
         "taobao: behavior_type 'like'"),
        # OTTO
        ("otto", '{"session": 7, "events": [', errors.MALFORMED_LINE, None),
        ("otto", '{"session": 7}', errors.MALFORMED_LINE,
         "otto: expected {'session', 'events': [...]}"),
        ("otto", '[{"session": 7, "events": []}]', errors.MALFORMED_LINE,
         "otto: expected {'session', 'events': [...]}"),
        ("otto", '{"events": []}', errors.MALFORMED_LINE,
         "otto: expected {'session', 'events': [...]}"),
        ("otto", '{"session": 7, "events": [{"aid": 1, "ts": 1659304800025, "type": "views"}]}',
         errors.MALFORMED_LINE, "otto: event 0 is not aid/ts/type"),
        ("otto", '{"session": 7, "events": [{"aid": 1, "ts": 1, "type": "clicks"}, 5]}',
         errors.MALFORMED_LINE, "otto: event 1 is not aid/ts/type"),
        ("otto", '{"session": 7, "events": [{"aid": 1, "type": "clicks"}]}',
         errors.MALFORMED_LINE, "otto: bad timestamp 'None'"),
        # values the canonical model refuses
        ("retailrocket", "1433221332117,,view,355908,", errors.MISSING_SHOPPER_ID, None),
        ("rees46", REES46_VIEW.replace("35.79", "-3"), errors.INVALID_EVENT,
         "product.price: Input should be greater than or equal to 0"),
        ("otto", '{"session": 7, "events": [{"ts": 1659304800025, "type": "clicks"}]}',
         errors.INVALID_EVENT, None),
        ("canonical", '{"shopper_id": "s", "type": "page_view"', errors.MALFORMED_JSON, None),
        ("segment", '{"type": "identify", "userId": "u"}', errors.UNSUPPORTED_EVENT_TYPE, None),
        ("ga4", '{"event_name": 7, "client_id": "c"}', errors.INVALID_EVENT,
         "a GA4 event needs an event_name, not 7"),
    ],
)  # fmt: skip
def test_malformed_lines(fmt: str, line: str, reason: str, detail: str | None) -> None:
    exc = parse_error(fmt, line)

    assert exc.reason == reason
    if detail is not None:
        assert exc.detail == detail


# --- read_events on the real samples (PROVENANCE.md) --------------------------------------
# Marked `samples` (through `shared_data`): skipped without INTENT_SAMPLES_DIR's files.
# The same reader properties on generated files: tests/unit/test_generated_files.py.


@pytest.fixture(scope="module")
def rees46(shared_data: Path) -> list[Event | LineError]:
    return list(read_events(shared_data / REES46_FILE, "rees46"))


@pytest.fixture(scope="module")
def taobao_run(shared_data: Path) -> tuple[list[Event | LineError], list[int]]:
    """The Taobao sample read once, with what its progress callback saw."""
    seen: list[int] = []
    items = list(read_events(shared_data / TAOBAO_FILE, "taobao", progress=seen.append))
    return items, seen


@pytest.fixture(scope="module")
def taobao(taobao_run: tuple[list[Event | LineError], list[int]]) -> list[Event | LineError]:
    return taobao_run[0]


@pytest.fixture(scope="module")
def otto(shared_data: Path) -> list[Event | LineError]:
    return list(read_events(shared_data / OTTO_FILE, "otto"))


def test_rees46_sample_counts(rees46: list[Event | LineError]) -> None:
    events, _ = split(rees46)

    assert len(events) == 17_434
    assert Counter(e.type for e in events) == {
        "product_view": 17_055,
        "add_to_cart": 165,
        "purchase": 214,
    }
    assert {e.source for e in events} == {"rees46"}


def test_rees46_sample_matches_provenance_table(rees46: list[Event | LineError]) -> None:
    events, _ = split(rees46)

    assert len({e.shopper_id for e in events}) == 4_504
    assert len({e.session_id for e in events}) == 5_066
    assert len({e.shopper_id for e in events if e.type == "purchase"}) == 193
    assert min(e.ts for e in events) == datetime(2019, 10, 1, 0, 0, tzinfo=UTC)
    assert max(e.ts for e in events) == datetime(2019, 10, 1, 2, 50, tzinfo=UTC)


def test_rees46_sample_truncated_last_line_is_the_only_error(
    shared_data: Path, rees46: list[Event | LineError]
) -> None:
    _, failures = split(rees46)
    with gzip.open(shared_data / REES46_FILE, "rt", encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines()

    assert len(lines) == 17_436  # header + 17,434 rows + the truncated one
    assert len(failures) == 1
    [failure] = failures
    assert failure.line_no == len(lines)
    assert failure.reason == errors.MALFORMED_LINE
    assert failure.detail == "rees46: expected 9 fields, got 8 (truncated line?)"
    assert failure.text == lines[-1]
    assert rees46[-1] is failure


def test_rees46_sample_repeated_rows_share_an_id(rees46: list[Event | LineError]) -> None:
    # Three rows appear more than once in the export (one four times, two twice); the
    # content-derived id is the same for byte-identical rows and differs for all others.
    events, _ = split(rees46)
    repeats = sorted(n for n in Counter(e.id for e in events).values() if n > 1)

    assert repeats == [2, 2, 4]
    assert len({e.id for e in events}) == 17_434 - 5


def test_taobao_sample_counts(taobao: list[Event | LineError]) -> None:
    events, failures = split(taobao)

    assert failures == []
    assert len(events) == 110_300
    assert Counter(e.type for e in events) == {
        "product_view": 98_361,
        "add_to_cart": 6_063,
        "wishlist_add": 3_383,
        "purchase": 2_493,
    }
    assert len({e.shopper_id for e in events}) == 66_454
    assert len({e.shopper_id for e in events if e.type == "purchase"}) == 2_407
    assert len({e.id for e in events}) == 110_300
    assert min(e.ts for e in events) == datetime(2017, 11, 26, 1, 0, tzinfo=UTC)
    assert max(e.ts for e in events) < datetime(2017, 11, 26, 3, 11, tzinfo=UTC)


def test_otto_sample_counts(otto: list[Event | LineError]) -> None:
    events, failures = split(otto)

    assert failures == []
    assert len(events) == 862
    assert Counter(e.type for e in events) == {
        "product_view": 800,
        "add_to_cart": 52,
        "purchase": 10,
    }
    assert len({e.shopper_id for e in events}) == 20
    assert len({e.shopper_id for e in events if e.type == "purchase"}) == 3
    assert {e.ts.strftime("%Y-%m") for e in events} <= {"2022-07", "2022-08"}


def test_reading_twice_gives_identical_ids(
    shared_data: Path, rees46: list[Event | LineError], otto: list[Event | LineError]
) -> None:
    for name, fmt, before in ((REES46_FILE, "rees46", rees46), (OTTO_FILE, "otto", otto)):
        first = [e.id for e in before if isinstance(e, Event)]
        second = [e.id for e in read_events(shared_data / name, fmt) if isinstance(e, Event)]

        assert len(first) in {17_434, 862}
        assert first == second


def test_progress_on_a_gzip_sample_ends_at_the_file_size(
    shared_data: Path, taobao_run: tuple[list[Event | LineError], list[int]]
) -> None:
    path = shared_data / TAOBAO_FILE
    items, seen = taobao_run

    assert len(items) == 110_300
    assert len(seen) == 110_300 // PROGRESS_EVERY_LINES + 1
    assert seen == sorted(seen)
    assert seen[0] > 0
    assert seen[-1] == path.stat().st_size


# --- read_events on hand-made files -------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_read_events_plain_and_gzip(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / "events.csv", [REES46_HEADER, REES46_VIEW, REES46_CART], gz=gz)

    events, failures = split(list(read_events(path, "rees46")))

    assert failures == []
    assert [e.type for e in events] == ["product_view", "add_to_cart"]
    assert events == parse("rees46", REES46_VIEW) + parse("rees46", REES46_CART)


@pytest.mark.parametrize(
    ("fmt", "header", "row"),
    [
        ("rees46", REES46_HEADER, REES46_VIEW),
        ("retailrocket", RETAILROCKET_HEADER, "1433221332117,257597,view,355908,"),
    ],
)
def test_header_line_is_skipped(tmp_path: Path, fmt: str, header: str, row: str) -> None:
    path = write(tmp_path / "events.csv", [header, row])

    items = list(read_events(path, fmt))

    assert items == parse(fmt, row)


def test_header_is_only_skipped_on_the_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", [REES46_HEADER, REES46_VIEW, REES46_HEADER])

    events, failures = split(list(read_events(path, "rees46")))

    assert len(events) == 1
    assert [(f.line_no, f.reason) for f in failures] == [(3, errors.UNSUPPORTED_EVENT_TYPE)]
    assert failures[0].text == REES46_HEADER


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path: Path) -> None:
    lines = [REES46_HEADER, "", REES46_VIEW, "   ", "\t", REES46_CART, "", "garbage", ""]
    path = write(tmp_path / "events.csv", lines)

    events, failures = split(list(read_events(path, "rees46")))

    assert [e.type for e in events] == ["product_view", "add_to_cart"]
    assert [(f.line_no, f.reason, f.text) for f in failures] == [
        (8, errors.MALFORMED_LINE, "garbage")
    ]


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", [REES46_HEADER, REES46_VIEW, "x"], newline="\r\n")

    events, failures = split(list(read_events(path, "rees46")))

    assert events == parse("rees46", REES46_VIEW)
    assert [(f.line_no, f.text) for f in failures] == [(3, "x")]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(f"{TAOBAO_PV}\n{TAOBAO_PV.replace('pv', 'buy')}")

    events, failures = split(list(read_events(path, "taobao")))

    assert failures == []
    assert [e.type for e in events] == ["product_view", "purchase"]


def test_line_error_text_is_cut_to_200_characters(tmp_path: Path) -> None:
    long_line = "x" * 500
    path = write(tmp_path / "events.csv", [long_line])

    [failure] = list(read_events(path, "taobao"))

    assert isinstance(failure, LineError)
    assert failure.text == "x" * 200


def test_jsonl_file_in_auto_format(tmp_path: Path) -> None:
    lines = [
        '{"shopper_id": "s", "type": "signup", "ts": "2026-11-23T10:00:00Z"}',
        '{"type": "track", "event": "Cart Viewed", "userId": "u", "timestamp": "2026-11-23"}',
        '{"event_name": "view_cart", "client_id": "c", "timestamp_micros": 1795428000000000}',
        '{"type": "track"',
    ]
    path = write(tmp_path / "events.jsonl", lines, gz=True)

    events, failures = split(list(read_events(path, "auto")))

    assert [e.source for e in events] == ["canonical", "segment", "ga4"]
    assert [(f.line_no, f.reason) for f in failures] == [(4, errors.MALFORMED_JSON)]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_progress_is_non_decreasing_and_ends_at_the_file_size(tmp_path: Path, gz: bool) -> None:
    rows = [f"{n},{n * 7},{n % 13},pv,{1511661600 + n}" for n in range(5_000)]
    path = write(tmp_path / "events.csv", rows, gz=gz)
    seen: list[int] = []

    count = sum(1 for _ in read_events(path, "taobao", progress=seen.append))

    assert count == 5_000
    assert len(seen) == 5_000 // PROGRESS_EVERY_LINES + 1
    assert all(a <= b for a, b in itertools.pairwise(seen))
    assert 0 < seen[0] <= path.stat().st_size
    assert seen[-1] == path.stat().st_size


def test_progress_on_a_small_file_is_called_once_at_the_end(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", [TAOBAO_PV])
    seen: list[int] = []

    list(read_events(path, "taobao", progress=seen.append))

    assert seen == [path.stat().st_size]


@pytest.mark.parametrize("fmt", ["csv", "REES46", "json", ""])
def test_unknown_format_raises_config_error(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path / "events.csv", [TAOBAO_PV])

    with pytest.raises(ConfigError, match="unknown format") as exc:
        list(read_events(path, fmt))

    assert "rees46" in str(exc.value)
    with pytest.raises(ConfigError):
        get_format(fmt)


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        list(read_events(tmp_path / "nope.csv", "taobao"))


def test_reading_a_hand_made_file_twice_gives_identical_ids(tmp_path: Path) -> None:
    rows = [TAOBAO_PV, TAOBAO_PV.replace("pv", "cart"), TAOBAO_PV.replace("1,", "2,", 1)]
    path = write(tmp_path / "events.csv", rows)

    first = [e.id for e in read_events(path, "taobao") if isinstance(e, Event)]
    second = [e.id for e in read_events(path, "taobao") if isinstance(e, Event)]

    assert len(set(first)) == 3
    assert first == second
