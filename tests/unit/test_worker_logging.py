"""A quiet worker must be cheap: no library's debug call may build a log record."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from stream.worker.main import faust_worker


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("loglevel", ["warning", "error"])
def test_a_quiet_worker_leaves_library_debug_logging_off(
    loglevel: str, root_logger: logging.Logger
) -> None:
    app = faust.App("log-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    worker = faust_worker(app, loglevel)
    worker._setup_logging()  # what the worker does as it starts
    assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    assert root_logger.getEffectiveLevel() == getattr(logging, loglevel.upper())
