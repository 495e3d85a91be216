"""The framework floor: a bare Faust agent that only counts (no decoding, no Redis).

    python -m bench.faust_floor BOOTSTRAP TOPIC N APP_ID RESULT_FILE
Writes {"events", "seconds"} (from the first event to the N-th) to RESULT_FILE.
"""

from __future__ import annotations

import json
import os
import sys
import time

import faust

from stream.settings import Settings
from stream.worker.main import faust_worker

bootstrap, topic_name, total, app_id, result_file = sys.argv[1:6]
N = int(total)
app = faust.App(
    app_id,
    broker=f"kafka://{bootstrap}",
    store="memory://",
    web_enabled=False,
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    consumer_auto_offset_reset="earliest",
    topic_disable_leader=True,
    datadir=str(Settings().data_dir / app_id),
)
topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
state = {"n": 0, "first": 0.0}


@app.agent(topic)
async def count(stream):  # type: ignore[no-untyped-def]
    async for _ in stream:
        if state["n"] == 0:
            state["first"] = time.perf_counter()
        state["n"] += 1
        if state["n"] >= N:
            with open(result_file + ".tmp", "w") as out:
                json.dump({"events": N, "seconds": time.perf_counter() - state["first"]}, out)
            os.replace(result_file + ".tmp", result_file)  # the runner stops this process
            return


if __name__ == "__main__":
    # As the intent worker runs it (stream.worker.main.faust_worker): no terminal spinner,
    # which at warning level sets the root logger to DEBUG.
    faust_worker(app, "warning").execute_from_commandline()
