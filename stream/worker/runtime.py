"""Process-wide tuning of a long-running worker."""

from __future__ import annotations

import gc
from typing import Final

# Collect the youngest generation every 20,000 allocations, not 700 (see `tune_gc`).
GC_THRESHOLDS: Final = (20_000, 20, 20)


def tune_gc() -> None:
    """Once the worker is up: move everything built so far (Faust, pydantic, the rules,
    the clients) out of the collector's sight, and collect less often.

    Each batch allocates and frees tens of thousands of objects, which with Python's
    default thresholds set off full collections that re-scanned the whole heap, a
    quarter of the hot path's time (docs/performance.md). Reference counting frees the
    batch's objects as before; cycles are still collected, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
