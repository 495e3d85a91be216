"""The demo schedule (`stream.devstack.demo`) is deterministic, valid, covers the playbook."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from schemas import errors
from schemas.adapters import decode_json
from schemas.errors import InvalidEvent
from schemas.events import Event
from stream.devstack.demo import BACKDATE_SECONDS, BAD_INPUT, SCENARIOS, known_id, traffic

START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
N = 500

Item = tuple[float, bytes | None, bytes]


def take(rate: float = 5.0, start: datetime = START, seed: int = 7, n: int = N) -> list[Item]:
    return list(itertools.islice(traffic(rate, start, seed), n))


def decode_all(items: list[Item]) -> tuple[list[tuple[Item, Event]], list[tuple[Item, str]]]:
    good: list[tuple[Item, Event]] = []
    bad: list[tuple[Item, str]] = []
    for item in items:
        try:
            good.append((item, decode_json(item[2])))
        except InvalidEvent as exc:
            bad.append((item, exc.reason))
    return good, bad


def visitor(event: Event) -> str:
    """The demo visitor an event belongs to: a sign-in is keyed by the known id it links
    the visitor's anonymous id to."""
    if event.type == "identify":
        assert event.anonymous_id is not None
        assert event.shopper_id == known_id(event.anonymous_id)
        return event.anonymous_id
    return event.shopper_id


def journey_of(steps: list[tuple[str, str | None]]) -> str | None:
    """The scenario whose (type, page type) steps these are, or start with."""
    for name, scenario in SCENARIOS.items():
        expected = [(kind, page) for kind, page, _, _ in scenario]
        if steps == expected[: len(steps)]:
            return name if len(steps) == len(expected) else f"{name} (unfinished)"
    return None


RATES = [0.5, 5.0, 50.0]


@pytest.mark.parametrize("seed", [7, 1, 12345])
def test_same_seed_and_start_give_the_same_items(seed: int) -> None:
    first = take(seed=seed)
    second = take(seed=seed)

    assert len(first) == N
    assert first == second


def test_another_seed_or_start_gives_other_items() -> None:
    base = take()

    assert take(seed=8) != base
    later = take(start=START + timedelta(hours=1))
    assert [at for at, _, _ in later] == [at for at, _, _ in base]  # same schedule
    assert [value for _, _, value in later] != [value for _, _, value in base]  # other stamps


@pytest.mark.parametrize("rate", RATES)
def test_times_are_non_decreasing_and_start_at_zero(rate: float) -> None:
    times = [at for at, _, _ in take(rate=rate)]

    assert times[0] == 0.0
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert times[-1] > 0


@pytest.mark.parametrize("rate", RATES)
def test_journeys_interleave(rate: float) -> None:
    good, _ = decode_all(take(rate=rate))
    shoppers = [event.shopper_id for _, event in good]
    switches = sum(1 for a, b in itertools.pairwise(shoppers) if a != b)
    # Interleaving: some shopper's steps are separated by another shopper's step.
    last_seen: dict[str, int] = {}
    gaps = 0
    for index, shopper in enumerate(shoppers):
        if shopper in last_seen and last_seen[shopper] != index - 1:
            gaps += 1
        last_seen[shopper] = index

    assert switches > 0
    assert gaps > 0


@pytest.mark.parametrize("rate", RATES)
def test_rate_is_roughly_kept(rate: float) -> None:
    items = take(rate=rate, n=2_000)

    observed = len(items) / items[-1][0]

    assert rate * 0.5 < observed < rate * 1.5


@pytest.mark.parametrize("rate", RATES)
def test_nearly_all_values_decode(rate: float) -> None:
    items = take(rate=rate)

    good, bad = decode_all(items)

    assert len(good) + len(bad) == N
    assert 0 < len(bad) < N * 0.10
    assert {reason for _, reason in bad} <= {errors.MALFORMED_JSON, errors.MISSING_SHOPPER_ID}
    assert {value for (_, _, value), _ in bad} <= set(BAD_INPUT)
    assert all(key is None for (_, key, _), _ in bad)


def test_both_kinds_of_bad_input_appear() -> None:
    _, bad = decode_all(take(n=2_000))

    assert Counter(reason for _, reason in bad).keys() == {
        errors.MALFORMED_JSON,
        errors.MISSING_SHOPPER_ID,
    }


def test_good_values_are_keyed_by_their_shopper_and_stamped_at_their_time() -> None:
    good, _ = decode_all(take())
    # Only the abandoned-checkout scenarios show the jacket and the boots (even when cut
    # off early).
    firsts = {SCENARIOS[name][0][2]["sku"]: name for name in BACKDATE_SECONDS}  # type: ignore[index]
    journeys = {visitor(e): firsts[e.product.sku] for _, e in good
                if e.product and e.product.sku in firsts}  # fmt: skip

    backdated = 0
    for (at, key, _), event in good:
        assert key == event.shopper_id.encode()
        shopper = visitor(event)
        assert shopper.startswith("demo-")
        assert event.session_id in (None, "sess-" + shopper.removeprefix("demo-"))
        # Abandoned checkouts lie in the past, so their absence fires while one watches.
        back = BACKDATE_SECONDS.get(journeys.get(shopper, ""), 0.0)
        backdated += back > 0
        expected = START + timedelta(seconds=at - back)
        # GA4 carries integer microseconds; allow the rounding of that conversion.
        assert abs(event.ts - expected) <= timedelta(microseconds=2)
    assert backdated > 0


def test_all_three_shapes_appear() -> None:
    good, _ = decode_all(take())

    sources = Counter(event.source for _, event in good)

    assert set(sources) == {"canonical", "segment", "ga4"}
    assert min(sources.values()) >= 10


@pytest.mark.parametrize("rate", RATES)
def test_every_scenario_appears_as_a_journey(rate: float) -> None:
    good, _ = decode_all(take(rate=rate, n=1_000))
    steps: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for _, event in good:
        steps[visitor(event)].append((event.type, event.page.type if event.page else None))

    journeys = {shopper: journey_of(seen) for shopper, seen in steps.items()}

    assert None not in journeys.values(), "a shopper's steps match no scenario"
    assert set(SCENARIOS) <= set(journeys.values())


def test_each_journey_is_one_shopper_and_one_session() -> None:
    good, _ = decode_all(take())
    sessions: dict[str, set[str | None]] = defaultdict(set)
    for _, event in good:
        if event.session_id is not None:  # (a Segment sign-in carries none)
            sessions[visitor(event)].add(event.session_id)

    assert all(len(found) == 1 for found in sessions.values())
    assert len(sessions) > 20
