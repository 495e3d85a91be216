"""Identity merges in replay: the ids a file links (`stream.core.identity.link_of`)
replayed together, each merge made at its link's event time.

While the file is read, `Links` joins the ids that events link, so every id of a
profile lands in one shard. A profile's events then go through the core in event time,
each under the id that holds it then: an anonymous id's events are its own until its
link, and the profile's after it. At each link the anonymous state is merged into the
known one with the worker's maths (`merge_patterns`, `scoring.merge`) and the same
outputs, with the same ids (the merge id). The same refusals hold: a known id merges
into another only by an alias, an id merges into one profile only, and a profile takes
at most `max_ids` ids.

The worker merges when the hand-over reaches the known id's owner, a moment after the
link; replay merges at the link itself.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Final

from schemas.events import Event
from schemas.outputs import AudienceChange
from stream.core import scoring
from stream.core.detectors.engine import State
from stream.core.identity import (
    arriving,
    leaving,
    link_of,
    merge_id,
    merge_patterns,
    merged,
    refusal,
)
from stream.core.outputs import Output
from stream.core.process import Apply, Core, Failures, Processed
from stream.core.scoring import ScoreConfig

DEFAULT_MAX_IDS: Final = 20  # as the worker's INTENT_IDENTITY_MAX_IDS


class Links:
    """The ids events link, joined (union-find; the smallest id of a group is its root,
    so the grouping does not depend on the order links come in)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, event: Event) -> None:
        link = link_of(event)
        if link is None:
            return
        a, b = self.root(link[0]), self.root(link[1])
        if a != b:
            low, high = sorted((a, b))
            self.parent[high] = low
            self.parent.setdefault(low, low)

    def root(self, shopper: str) -> str:
        parent = self.parent
        root = shopper
        while parent.get(root, root) != root:
            root = parent[root]
        while shopper != root:  # path compression
            parent[shopper], shopper = root, parent[shopper]
        return root

    def __bool__(self) -> bool:
        return bool(self.parent)

    def groups(self, shoppers: Iterable[str]) -> dict[str, list[str]]:
        """The linked shoppers among these, by profile (groups of two or more)."""
        by_root: dict[str, list[str]] = defaultdict(list)
        for shopper in shoppers:
            if shopper in self.parent:
                by_root[self.root(shopper)].append(shopper)
        return {root: sorted(ids) for root, ids in by_root.items() if len(ids) > 1}


class Profile:
    """One profile's ids replayed together (`run`); the outcome in `done`."""

    def __init__(
        self, core: Core, scores: dict[str, dict[str, Any]], apply: Apply, max_ids: int
    ) -> None:
        self.core = core
        self.cfg: ScoreConfig = core.config
        self.scores = scores  # the run's score states, by id (`MemoryScores.states`)
        self.apply = apply
        self.max_ids = max_ids
        self.patterns: dict[str, State] = {}
        self.identity: dict[str, dict[str, Any]] = defaultdict(dict)
        self.audiences: dict[str, set[str]] = defaultdict(set)
        self.done = Processed()
        self.merged = 0

    def run(
        self, members: dict[str, list[Event]], end: float, loop: asyncio.AbstractEventLoop,
        failures: Failures,
    ) -> Processed:  # fmt: skip
        """`members`: each id's events in the order they go through."""
        for shopper in members:
            self.patterns[shopper] = self.core.new_state()
        streams = [[(e.ts, i, n, e) for n, e in enumerate(events)]
                   for i, events in enumerate(members.values())]  # fmt: skip
        pending: dict[str, list[Event]] = defaultdict(list)
        for _, _, _, event in heapq.merge(*streams):
            holder = self._holder(event.shopper_id)
            if holder != event.shopper_id:
                event = event.model_copy(update={"shopper_id": holder})
            pending[holder].append(event)
            if event.identified:
                self.identity[holder]["known"] = True
            link = link_of(event)
            if link is not None:
                self._run(pending, loop, failures)
                pending.clear()
                self._merge(*link, event.ts.timestamp())
        live = [s for s in members if "into" not in self.identity[s]]
        for shopper in live:
            pending.setdefault(shopper, [])
        self._run(pending, loop, failures, end)
        return self.done

    def _holder(self, shopper: str) -> str:
        seen = {shopper}
        while "into" in self.identity[shopper]:
            shopper = self.identity[shopper]["into"][0]
            if shopper in seen:
                break
            seen.add(shopper)
        return shopper

    def _run(
        self,
        pending: dict[str, list[Event]],
        loop: asyncio.AbstractEventLoop,
        failures: Failures,
        end: float | None = None,
    ) -> None:
        chunk = {
            s: (self.patterns[s], events) for s, events in pending.items() if s not in failures
        }
        if not chunk:
            return
        done = loop.run_until_complete(
            self.core.run(chunk, self.apply, failures, until=end, at=end)
        )
        self._take(done, failures)

    def _take(self, done: Processed, failures: Failures) -> None:
        out = self.done
        out.duplicates += done.duplicates
        for shopper, late in done.late.items():
            out.late.setdefault(shopper, []).extend(late)
        for shopper, signals in done.signals.items():
            if shopper not in failures:
                out.signals.setdefault(shopper, []).extend(signals)
        for shopper, outputs in done.outputs.items():
            if shopper not in failures:
                self._outputs(shopper, outputs)

    def _outputs(self, shopper: str, outputs: list[Output]) -> None:
        self.done.outputs.setdefault(shopper, []).extend(outputs)
        for output in outputs:
            value = output.value
            if isinstance(value, AudienceChange):
                held = self.audiences[value.shopper_id]
                if value.op == "add":
                    held.add(value.audience)
                else:
                    held.discard(value.audience)

    def _merge(self, anonymous: str, linked: str, kind: str, at: float) -> None:
        """At the link's time: the anonymous id's state into the profile that holds the
        known id (itself, or the one an alias merged it into, as the worker's hand-over
        goes on along aliases with the link's merge id)."""
        mid = merge_id(anonymous, linked, at)
        known = self._holder(linked)
        mine = self.identity[anonymous]
        scores = self.scores
        why = refusal(mine, known, kind, None, at)
        target = self.identity[known]
        if why is None and len(target.get("ids", {})) + 1 + len(mine.get("ids", {})) > self.max_ids:
            why = "capped"
            mine["refused"] = [*mine.get("refused", []), known]
        if why is not None or anonymous == known:
            return
        empty = scoring.new_state()
        theirs = scores.get(anonymous, empty)
        members = sorted(self.audiences.get(anonymous, ()))
        self._outputs(anonymous, leaving(anonymous, known, theirs["tier"], members, mid, at))
        self.audiences[anonymous] = set()
        mine_score = scores.setdefault(known, scoring.new_state())
        engine = self.core.engine
        merge_patterns(
            engine, self.patterns.setdefault(known, engine.new_state()),
            self.patterns.setdefault(anonymous, engine.new_state()),
            (mine_score["reset"], theirs["reset"]),
        )  # fmt: skip
        result = scoring.merge(mine_score, theirs, at, self.cfg, mid)
        outputs = merged(known, anonymous, result, mid)
        outputs += arriving(known, result.to_tier, members, mid, at)
        self._outputs(known, outputs)
        ids = {**target.get("ids", {}), **mine.get("ids", {}), anonymous: [mid, at]}
        target.update(known=True, ids=ids)
        self.identity[anonymous] = {"into": [known, at, mid]}
        self.patterns[anonymous] = self.core.new_state()
        scores[anonymous] = empty
        self.merged += 1
