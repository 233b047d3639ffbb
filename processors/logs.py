"""Structured logs (structlog). Log codes, ids and counts; never bodies, names or addresses."""

from __future__ import annotations

import logging
import sys
import weakref
from typing import Any, TextIO, cast

import orjson
import structlog

# Whether DEBUG lines are written: a hot path tests this before building a line that would be
# dropped (structlog's default, before configure(), writes every level).
DEBUG = True
# Every logger get() handed out: each caches its configuration on first use (fast), so configure()
# makes them forget it; a process configures once at start, a test suite more than once.
_LOGGERS: weakref.WeakSet[Any] = weakref.WeakSet()


def configure(level: str = "INFO", fmt: str = "json") -> None:
    global DEBUG
    numeric = logging.getLevelName(level)
    DEBUG = not isinstance(numeric, int) or numeric <= logging.DEBUG
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=True,
    )
    for logger in _LOGGERS:
        logger.__dict__.pop("bind", None)  # structlog's cached bind: the next line re-reads the configuration


def _dumps(obj: object, default: Any = None) -> str:
    """orjson instead of the stdlib encoder: a third of the cost of a log line."""
    return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()


class _Stderr:
    """Whatever sys.stderr is when a line is written (loggers are cached; stderr may be swapped)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    logger = structlog.get_logger(name)
    _LOGGERS.add(logger)
    return logger  # type: ignore[no-any-return]
