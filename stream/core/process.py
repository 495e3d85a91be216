"""The one composition of the core: detect -> score -> outputs, for a set of shoppers.

The worker (a batch of events, a sweep of due deadlines) and `intent replay` (a file's
shoppers, in event time) both call `Core.run`, with the same scoring maths in memory;
only where the state comes from differs (the owner's records, or a fresh state per
shopper of the file). So the order of the steps, the scoring order of the signals and
the outputs' ids are the same in both by construction.

A shopper whose detection, scoring or outputs raise (a bug, or input no bound caught) is
left out alone: it goes into `Failures`, and every other shopper goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from schemas.events import Event
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.core.detectors.engine import Engine, State
from stream.core.outputs import Output, outputs_for, score_signals
from stream.core.scoring import Result, ScoreConfig, ScoreSignal

# What a score store is given (each shopper's signals, and the time to decay to, or None
# for "the time of the last signal") and what it gives back.
ScoreBatch = dict[str, tuple[list[ScoreSignal], float | None]]
Apply = Callable[[ScoreBatch], Awaitable[dict[str, Result]]]
OnFailure = Callable[[str, str, Exception], None]  # (stage, shopper, exception)


class Failures(dict[str, Exception]):
    """Shoppers left out -> what they raised. `on_failure(stage, shopper, exc)` is told of
    each (the worker counts and logs them; replay counts them)."""

    def __init__(self, on_failure: OnFailure | None = None) -> None:
        super().__init__()
        self.on_failure = on_failure

    def add(self, stage: str, shopper: str, exc: Exception) -> None:
        self[shopper] = exc
        if self.on_failure is not None:
            self.on_failure(stage, shopper, exc)


@dataclass
class Processed:
    """What one `Core.run` gave, each shopper's in the order the shoppers were given."""

    signals: dict[str, list[Signal]] = field(default_factory=dict)
    late: dict[str, list[Event]] = field(default_factory=dict)
    duplicates: int = 0
    groups: dict[str, int] = field(default_factory=dict)  # signal id -> its score group
    results: dict[str, Result] = field(default_factory=dict)
    outputs: dict[str, list[Output]] = field(default_factory=dict)

    def all_signals(self, failures: Failures) -> list[Signal]:
        return [
            s for shopper, sigs in self.signals.items() if shopper not in failures for s in sigs
        ]

    def all_outputs(self) -> list[Output]:
        return [output for outputs in self.outputs.values() for output in outputs]


class Core:
    """The rules, compiled once: the detectors and the score configuration."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.engine = Engine(rules)
        self.config = score_config(rules)
        self.lateness = self.engine.lateness

    def new_state(self) -> State:
        return self.engine.new_state()

    async def run(
        self,
        shoppers: dict[str, tuple[State, list[Event]]],
        apply: Apply,
        failures: Failures,
        *,
        until: float | None = None,
        at: float | None = None,
    ) -> Processed:
        """Each shopper's events through detection (their state changes in place), then
        what is due by `until` fired, the signals scored by `apply` (decayed to `at`),
        and the results turned into outputs."""
        done = self.detect(shoppers, failures, until)
        batch = self.score_batch(done.signals, failures, at, done.groups)
        done.results = await apply(batch) if batch else {}
        done.outputs = self.outputs(done.results, done.signals, failures)
        return done

    def detect(
        self,
        shoppers: dict[str, tuple[State, list[Event]]],
        failures: Failures,
        until: float | None = None,
    ) -> Processed:
        done = Processed()
        engine = self.engine
        for shopper, (state, events) in shoppers.items():
            try:
                signals: list[Signal] = []
                if events:
                    outcome = engine.process(shopper, state, events)
                    signals = outcome.signals
                    done.groups.update(outcome.groups)
                    if outcome.late:
                        done.late[shopper] = outcome.late
                    done.duplicates += outcome.duplicates
                if until is not None:
                    signals = signals + engine.advance(shopper, state, until)
            except Exception as exc:
                failures.add("detect", shopper, exc)
                continue
            if signals:
                done.signals[shopper] = signals
        return done

    @staticmethod
    def score_batch(
        signals: dict[str, list[Signal]],
        failures: Failures,
        at: float | None = None,
        groups: dict[str, int] | None = None,
    ) -> ScoreBatch:
        """The signals as scoring takes them, in their scoring order (`groups`:
        `Outcome.groups`; a signal not in it is `ADVANCED`)."""
        batch: ScoreBatch = {}
        for shopper, sigs in signals.items():
            try:
                batch[shopper] = (score_signals(sigs, groups or {}), at)
            except Exception as exc:
                failures.add("score", shopper, exc)
        return batch

    @staticmethod
    def outputs(
        results: dict[str, Result], signals: dict[str, list[Signal]], failures: Failures
    ) -> dict[str, list[Output]]:
        """Each result's tier changes and actions; a shopper whose outputs raise is taken
        out of `results` too, so nothing of it is indexed or sent."""
        out: dict[str, list[Output]] = {}
        for shopper, result in list(results.items()):
            try:
                out[shopper] = outputs_for(shopper, result, signals.get(shopper, []))
            except Exception as exc:
                failures.add("outputs", shopper, exc)
                del results[shopper]
        return out


def score_config(rules: RuleSet) -> ScoreConfig:
    tiers = rules.tiers
    return ScoreConfig(tiers.low, tiers.mid, tiers.high, tiers.hysteresis)
