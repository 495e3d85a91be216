"""`make floors` (bench/floors.py) on the test servers, small: every floor is measured
from what really went through the broker and Redis."""

from __future__ import annotations

import os
from pathlib import Path

from bench import floors
from stream.settings import Settings


def test_floors_measure_the_workers_transport_on_its_own_output(
    settings: Settings, taobao_file: Path
) -> None:
    # Any process serves to check the per-second CPU samples: this one.
    result = floors.run(
        settings, events=2000, rate=200, seconds=[2], broker_pid=os.getpid(), taobao=taobao_file
    )
    # The worker's pipeline gave its output for these events (a new shopper's product
    # view alone gives a signal, a tier change and an audience add), and it was sent.
    assert result["records_out_per_event"] > 1
    # one fenced script call per partition a batch writes, not one per shopper
    assert 0 < result["script_calls_per_event"] < 0.5
    assert result["redis_script_us_per_event"] > 0
    # The bare path carried every offered event to the output topic.
    (bare,) = result["bare_path"]
    assert bare["seconds"] == 2
    assert bare["latency_offered"] == bare["latency_samples"] == 400
    assert 0 < bare["p50_ms"] <= bare["p99_ms"] == result["p99_ms"]
    assert 1 <= len(bare["broker_cpu_by_second"]) <= 2  # a sample a second, cut at the run's end
    assert all(share >= 0 for share in bare["broker_cpu_by_second"])
    for key in ("consume", "ingest", "send"):
        assert result[f"{key}_us_per_event"] > 0
    assert result["worker_floor_events_per_s"] > 0
    assert result["redis_floor_script_us_per_call"] > 0
    assert result["replay_read_events_per_s"] > 0
