"""Identity merges in the worker: an anonymous shopper's state handed to its known
profile through intent.events, so that exactly one owner holds each profile at any time.

    ingest: an event linking A to K --> `merge` keyed A   (and the event, keyed K)
    A's owner, at the merge, in order with A's events:
        A's record, audiences and tier --> `handover` keyed K; A leaves its tier and
        audiences; A's record becomes a redirect to K (`into`)
        A's later events --> `forwarded` keyed K
    K's owner, at the hand-over, in order with K's events:
        merges A's state into K's (`stream.core.identity`): a tier change of reason
        `merge`, A's audiences added to K; or, K holding `identity_max_ids` already, a
        `handback` keyed A, and A's owner restores A

Every move is sent, acked, and only then is the source's record written (the batch's
order, `Pipeline.flush`): a crash in between sends the same hand-over again from the
state Redis holds, and K's owner takes a merge id once (`Record.identity["ids"]`).
The records are control records of intent.events (`stream.worker.control`).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from schemas.events import Event
from schemas.outputs import OutputTopic, TierChange
from stream.core import scoring
from stream.core.identity import (
    MAX_HOPS,
    arriving,
    leaving,
    link_of,
    merge_id,
    merge_patterns,
    merged,
    refusal,
)
from stream.core.outputs import Output, _audience, change_id
from stream.state.records import Record, decode, encode
from stream.state.store import merged_into
from stream.worker.control import PREFIXES, forget_request

if TYPE_CHECKING:
    from stream.core.ingest import RawRecord
    from stream.worker.outbox import Outbox
    from stream.worker.pipeline import Pipeline

log = logging.getLogger(__name__)

LINKS_REMEMBERED: Final = 100_000  # links ingest has sent, not sent again (volume only)
DECLINED_CAP: Final = 100  # anonymous ids a full profile remembers refusing


class Refused(Exception):
    """A control record that cannot be applied (it goes round a loop of aliases): it is
    dead-lettered, and the shopper goes on."""


@dataclass
class Control:
    """A control record of intent.events, for the shopper it is keyed by."""

    kind: str  # forget, merge, handover, handback, forwarded
    body: dict[str, Any]
    record: RawRecord
    event: Event | None = None  # forwarded: the event, as its own shopper sent it


def is_control(value: bytes) -> bool:
    return value.startswith(PREFIXES)


def parse(record: RawRecord) -> tuple[str, Control]:
    """(the shopper it concerns, the control); raises ValueError if unreadable."""
    body = orjson.loads(record.value or b"")
    if not isinstance(body, dict):
        raise ValueError("not an object")
    kind = next(iter(body))
    if kind == "forwarded":
        event = Event.model_validate(body["event"])
        return str(body["into"]), Control(kind, body, record, event)
    shopper = str(body["into"]) if kind == "handover" else str(body[kind])
    float(body["at"])  # present and readable
    if kind != "forget":
        str(body["id"])
    return shopper, Control(kind, body, record)


class Identities:
    """The identity side of one worker's `Pipeline`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.topic = pipeline.settings.topic_normalised
        self.max_ids = pipeline.settings.identity_max_ids
        self.sent: dict[tuple[str, str], None] = {}  # links sent (an LRU, insertion order)
        self.sending: list[tuple[str, str]] = []  # ... this batch's, once it is flushed

    # --- ingest -------------------------------------------------------------------------
    def link(self, event: Event, outbox: Outbox) -> None:
        """The merge request of an event that links an anonymous id to a known one,
        keyed by the anonymous id; once per link in a while (the owner drops repeats)."""
        link = link_of(event)
        if link is None:
            return
        anonymous, known, kind = link
        pair = (anonymous, known)
        if pair in self.sent and kind == "implicit":
            return
        self.sent[pair] = None
        self.sending.append(pair)
        at = event.ts.timestamp()
        request = {"merge": anonymous, "into": known, "at": at,
                   "id": merge_id(anonymous, known, at), "kind": kind}  # fmt: skip
        outbox.add(self.topic, anonymous.encode(), orjson.dumps(request))

    def flushed(self, ok: bool) -> None:
        """After a batch: its links are remembered if it went out, else sent again."""
        if not ok:
            for pair in self.sending:
                self.sent.pop(pair, None)
        self.sending = []
        while len(self.sent) > LINKS_REMEMBERED:
            del self.sent[next(iter(self.sent))]

    # --- the owner ----------------------------------------------------------------------
    def forward(self, shopper: str, record: Record, events: list[Event], outbox: Outbox) -> None:
        """Events of a shopper merged into a profile: sent on to it, in order."""
        into = record.identity["into"][0] if record.identity else None
        assert into is not None
        for event in events:
            value = {"forwarded": shopper, "into": into, "hops": 0,
                     "event": orjson.Fragment(event.to_json())}  # fmt: skip
            outbox.add(self.topic, into.encode(), orjson.dumps(value))

    async def apply(
        self, shopper: str, record: Record, partition: int, control: Control, outbox: Outbox
    ) -> list[Event]:
        """Apply one control record to the shopper it is keyed by; returns the events to
        process as the shopper's (a forwarded event taken)."""
        if control.kind == "merge":
            await self._merge(shopper, record, partition, control.body, outbox)
        elif control.kind == "handover":
            self._handover(shopper, record, partition, control.body, outbox)
        elif control.kind == "handback":
            self._handback(shopper, record, partition, control.body, outbox)
        else:
            return self._forwarded(shopper, record, control, outbox)
        return []

    def _outcome(self, outcome: str) -> None:
        self.pipeline.metrics.identity_merges.labels(outcome).inc()

    async def _merge(
        self, anonymous: str, record: Record, partition: int, body: dict[str, Any], outbox: Outbox
    ) -> None:
        """At A's owner: hand A's state to K, or drop the request with the reason."""
        known, at, mid = str(body["into"]), float(body["at"]), str(body["id"])
        why = refusal(record.identity, known, str(body.get("kind")), record.forgotten, at)
        if why is not None:
            self._outcome(why)
            if why in ("conflict", "known", "loop"):
                log.info("%r is not merged into %r: %s", anonymous, known, why)
            return
        pipeline = self.pipeline
        names, members = await pipeline.retry(
            "merge", self._memberships, anonymous, partition, outbox
        )
        handover = {
            "handover": anonymous, "into": known, "at": at, "id": mid, "kind": body.get("kind"),
            "record": base64.b64encode(encode(record)).decode(), "audiences": members, "hops": 0,
        }  # fmt: skip
        outbox.add(self.topic, known.encode(), orjson.dumps(handover))
        pipeline.send_outputs(
            leaving(anonymous, known, record.score["tier"], members, mid, at), outbox
        )
        fresh = pipeline.owner.fresh()
        refused = (record.identity or {}).get("refused")
        record.patterns, record.score = fresh.patterns, fresh.score
        record.identity = {"into": [known, at, mid], **({"refused": refused} if refused else {})}
        outbox.erase(partition, anonymous, names)
        outbox.saved[anonymous] = (partition, record)
        self._outcome("handed_over")

    async def _memberships(
        self, shopper: str, partition: int, outbox: Outbox
    ) -> tuple[list[str], list[str]]:
        """(every audience of the partition, those the shopper is in): in Redis, with
        this batch's moves not yet written."""
        pipeline = self.pipeline
        names = await pipeline._audience_names(partition)
        write = outbox.write(partition)
        batch = {name: op for (name, s), op in write.audiences.items() if s == shopper}
        stored: list[Any] = []
        if names:
            client = pipeline.redis
            keys = pipeline.owner.keys
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.sismember(keys.audience(partition, name), shopper)
                stored = await pipe.execute()
        members = {n for n, is_in in zip(names, stored, strict=True) if is_in}
        members |= {n for n, op in batch.items() if op == "add"}
        members -= {n for n, op in batch.items() if op == "remove"}
        return sorted(set(names) | set(batch)), sorted(members)

    def _handover(
        self, known: str, record: Record, partition: int, body: dict[str, Any], outbox: Outbox
    ) -> None:
        """At K's owner: merge A's state into K's, once per merge id."""
        pipeline = self.pipeline
        anonymous, at, mid = str(body["handover"]), float(body["at"]), str(body["id"])
        onward = merged_into(record)
        if onward is not None:  # K was itself merged (an alias): on to its profile
            self._onward(onward, body, outbox)
            return
        identity = dict(record.identity or {})
        ids: dict[str, Any] = dict(identity.get("ids", {}))
        if ids.get(anonymous, [None])[0] == mid:
            self._outcome("duplicate")
            return
        if record.forgotten is not None and record.forgotten >= at:
            # K was erased after the link: A's state goes with it
            outbox.add(self.topic, anonymous.encode(), forget_request(anonymous, record.forgotten))
            self._outcome("forgotten")
            return
        theirs = decode(base64.b64decode(body["record"]), pipeline.owner.fresh().score)
        carried = (theirs.identity or {}).get("ids", {})
        if len(ids) + 1 + len(carried) > self.max_ids:
            self._refuse(known, record, partition, identity, body, outbox)
            return
        merge_patterns(
            pipeline.core.engine,
            record.patterns,
            theirs.patterns,
            (record.score["reset"], theirs.score["reset"]),
        )
        result = scoring.merge(record.score, theirs.score, at, pipeline.core.config, mid)
        outputs = merged(known, anonymous, result, mid)
        outputs += arriving(known, result.to_tier, list(body.get("audiences", [])), mid, at)
        ids.update(carried)
        ids[anonymous] = [mid, at]
        identity.update(known=True, ids=ids)
        record.identity = identity
        pipeline.index({known: result}, {}, {known: partition}, {known: outputs}, outbox)
        pipeline.send_outputs(outputs, outbox)
        outbox.saved[known] = (partition, record)
        self._outcome("merged")
        log.info("merged %r into %r (%s)", anonymous, known, body.get("kind"))

    def _refuse(
        self,
        known: str,
        record: Record,
        partition: int,
        identity: dict[str, Any],
        body: dict[str, Any],
        outbox: Outbox,
    ) -> None:
        anonymous = str(body["handover"])
        back = {"handback": anonymous, "from": known, "at": body["at"], "id": body["id"],
                "record": body["record"], "audiences": body.get("audiences", [])}  # fmt: skip
        outbox.add(self.topic, anonymous.encode(), orjson.dumps(back))
        declined = [a for a in identity.get("declined", []) if a != anonymous]
        identity["declined"] = [*declined, anonymous][-DECLINED_CAP:]
        record.identity = identity
        outbox.saved[known] = (partition, record)
        self._outcome("capped")
        log.warning(
            "profile %r holds %d ids (INTENT_IDENTITY_MAX_IDS): %r is not merged into it",
            known, len(identity.get("ids", {})), anonymous,
        )  # fmt: skip

    def _handback(
        self, anonymous: str, record: Record, partition: int, body: dict[str, Any], outbox: Outbox
    ) -> None:
        """At A's owner: K was full; A gets its state back and will not link to K again."""
        pipeline = self.pipeline
        into = (record.identity or {}).get("into")
        mid, known = str(body["id"]), str(body["from"])
        if not into or into[2] != mid:
            return  # handed back already
        restored = decode(base64.b64decode(body["record"]), pipeline.owner.fresh().score)
        identity = dict(restored.identity or {})
        identity["refused"] = [*identity.get("refused", []), known]
        record.patterns, record.score, record.identity = (
            restored.patterns,
            restored.score,
            identity,
        )
        at, tier = float(body["at"]), record.score["tier"]
        when = datetime.fromtimestamp(at, tz=UTC)
        cause = f"{mid}:back"
        outputs: list[Output] = []
        write = outbox.write(partition)
        if tier != "none":
            change = TierChange(
                change_id=change_id(anonymous, cause, when, "none", tier, "merge"),
                shopper_id=anonymous, from_tier="none", to_tier=tier, score=0.0, at=when,
                reason="merge", signals=[], merged_with=known,
            )  # fmt: skip
            outputs.append(Output(OutputTopic.TIER_CHANGES, anonymous, change))
            write.move(anonymous, "none", tier)
        for name in body.get("audiences", []):
            outputs.append(_audience(anonymous, cause, "add", name, tier, when, "merge"))
            write.audiences[(name, anonymous)] = "add"
        write.decays[anonymous] = scoring.next_deadline(record.score, pipeline.core.config)
        pipeline.send_outputs(outputs, outbox)
        outbox.saved[anonymous] = (partition, record)

    def _forwarded(
        self, known: str, record: Record, control: Control, outbox: Outbox
    ) -> list[Event]:
        event, body = control.event, control.body
        assert event is not None
        onward = merged_into(record)
        if onward is not None:
            self._onward(onward, body, outbox)
            return []
        if event.shopper_id in (record.identity or {}).get("declined", ()):
            outbox.add(self.topic, event.shopper_id.encode(), event.to_json())  # back to A
            return []
        return [event.model_copy(update={"shopper_id": known})]

    def _onward(self, into: str, body: dict[str, Any], outbox: Outbox) -> None:
        """A record for a profile that was itself merged (an alias), sent on to the
        profile it went to; past MAX_HOPS (aliases that cross each other), refused: the
        record is dead-lettered, with the state it carries."""
        hops = int(body.get("hops", 0)) + 1
        if hops > MAX_HOPS:
            self._outcome("loop")
            raise Refused(f"an identity record sent on {MAX_HOPS} times (aliases in a loop)")
        outbox.add(self.topic, into.encode(), orjson.dumps({**body, "into": into, "hops": hops}))

    def forgotten(self, shopper: str, record: Record, at: float, outbox: Outbox) -> None:
        """A forget reaches every id of the profile: the merged ids from the profile, and
        the profile from a merged id."""
        identity = record.identity or {}
        others = list(identity.get("ids", {}))
        if identity.get("into"):
            others.append(str(identity["into"][0]))
        for other in others:
            outbox.add(self.topic, other.encode(), forget_request(other, at))
