"""The built-in rules, untuned, on each real sample: lift rises low < mid < high, the high
tier's lift is at least the naive rule's, and as large a share of buyers reaches mid or
high before their first purchase as under the naive rule. Replayed by the real engine.
And `intent calibrate` on the samples, from the playbook's prior and from the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.offline.calibrate import calibrate, check_written
from stream.offline.files import LineError, read_events
from stream.offline.replay import replay
from stream.offline.standing import naive_reached, purchases_of, rules_reached, standing
from stream.rulesfile import default_rules_text, load_rules

SAMPLES = [
    ("rees46_2019-10-01_head.csv.gz", "rees46"),
    ("taobao_userbehavior_2017-11-26.csv.gz", "taobao"),
    ("otto_20_sessions.jsonl.gz", "otto"),
]


@pytest.mark.parametrize(("name", "fmt"), SAMPLES, ids=[fmt for _, fmt in SAMPLES])
def test_the_defaults_beat_the_naive_rule_on_each_sample(
    shared_data: Path, name: str, fmt: str
) -> None:
    path = shared_data / name
    events = [e for e in read_events(path, fmt) if not isinstance(e, LineError)]
    buys = purchases_of(events)
    result = replay(path, fmt, load_rules())
    ours = standing(rules_reached(result), buys, result.shoppers)
    naive = standing(naive_reached(events), buys, result.shoppers)
    low, mid, high = (ours.lift[tier] for tier in ("low", "mid", "high"))
    assert low is not None and mid is not None and high is not None
    assert low < mid < high, ours
    assert naive.lift["high"] is not None
    assert high >= naive.lift["high"], (ours, naive)
    assert ours.capture >= naive.capture, (ours, naive)
    assert ours.reached["high"] > 0


# The points the built-in file carried before they were chosen on the samples: the
# playbook's wording (a product view 2, three distinct product pages 12, a cart add 10,
# a checkout 20) and tiers 1 / 15 / 35.
PRIOR = {
    "checkout_started": 20, "several_product_pages": 12, "product_viewed": 2,
    "three_product_views": 14, "added_to_cart": 10, "wishlist_add": 8,
    "repeat_product_views": 10, "repeat_collection_views": 6, "single_page_visit": 1,
}  # fmt: skip


def prior_rules_text() -> str:
    text = default_rules_text()
    for rule_id, points in PRIOR.items():
        start = text.index(f"  - id: {rule_id}\n")
        end = text.find("\n  - id:", start + 1)
        block = re.sub(r"points: [0-9.]+", f"points: {points}", text[start:end], count=1)
        text = text[:start] + block + text[end:]
    text = re.sub(r"\n  low: [0-9.]+", "\n  low: 1", text)
    return re.sub(r"\n  high: [0-9.]+", "\n  high: 35", text)


@pytest.mark.parametrize(("name", "fmt"), SAMPLES[:2], ids=[fmt for _, fmt in SAMPLES[:2]])
def test_calibrate_beats_the_playbook_prior_out_of_sample(
    shared_data: Path, name: str, fmt: str
) -> None:
    text = prior_rules_text()
    rules = check_written(text)
    assert rules.tiers.high == 35
    done = calibrate(shared_data / name, fmt, rules, text)
    assert done.after.beats(done.before), (done.before, done.after)
    assert done.kept and done.text != text


@pytest.mark.parametrize(("name", "fmt"), SAMPLES[:1], ids=[fmt for _, fmt in SAMPLES[:1]])
def test_calibrate_from_the_defaults_beats_them_or_keeps_them(
    shared_data: Path, name: str, fmt: str
) -> None:
    text = default_rules_text()
    done = calibrate(shared_data / name, fmt, load_rules(), text)
    assert done.kept == done.after.beats(done.before)
    if not done.kept:
        assert done.text == text
    else:  # what it writes is what it checked
        assert check_written(done.text).tiers == done.calibrated.tiers
        assert done.text != text
