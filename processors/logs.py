"""Structured logs (structlog). Log codes, ids and counts; never bodies, names or addresses."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable
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


# librdkafka repeats a line while a broker is away (FAIL twice a second per client): the same line
# of the same client is written once per REPEAT_S, then again with how many were left out.
REPEAT_S = 60.0
# What changes between two repeats of one line: times ("after 0ms in state CONNECT") and
# librdkafka's own count of the lines it left out.
_VARYING = re.compile(r"\d+\s*ms\b|, \d+ identical error\(s\) suppressed")
_ROLE_LOGGERS: dict[str, logging.Logger] = {}
_ROLE_LOCK = threading.Lock()


def librdkafka(role: str) -> logging.Logger:
    """The logging.Logger a Kafka client of `role` is given (confluent-kafka's `logger`): its lines
    become structured `kafka_client` lines with the role, repeats held back (see RepeatFilter)."""
    with _ROLE_LOCK:
        if role not in _ROLE_LOGGERS:
            logger = logging.Logger(f"kycstream.librdkafka.{role}", logging.DEBUG)  # not in the stdlib tree
            logger.propagate = False
            logger.addHandler(_ClientLines(role))
            _ROLE_LOGGERS[role] = logger
        return _ROLE_LOGGERS[role]


class RepeatFilter:
    """Whether a line is written now: the first of its kind is, a repeat within `window_s` is counted
    instead, and the first repeat after the window is written with that count (`repeated`)."""

    def __init__(self, window_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.held: dict[tuple[str, ...], tuple[float, int]] = {}  # kind -> (written at, repeats held since)

    def admit(self, kind: tuple[str, ...]) -> int | None:
        """None to hold the line back, else how many of its kind were held back before it."""
        now = self.clock()
        written_at, held = self.held.get(kind, (now - self.window_s, 0))
        if now - written_at < self.window_s:
            self.held[kind] = (written_at, held + 1)
            return None
        if len(self.held) > 1000:  # lines that vary without end (debug contexts): forget the old ones
            self.held = {k: v for k, v in self.held.items() if now - v[0] < self.window_s}
        self.held[kind] = (now, 0)
        return held


class _ClientLines(logging.Handler):
    """confluent-kafka calls logger.log(level, "%s [%s] %s", facility, client name, message)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.repeats = RepeatFilter()
        self._log = get("kycstream.kafka")

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) and len(record.args) == 3 else None
        facility, client, message = (str(a) for a in args) if args else ("", "", record.getMessage())
        held = self.repeats.admit((facility, client, _VARYING.sub("", message)))
        if held is None:
            return
        fields: dict[str, Any] = {"role": self.role, "client": client, "facility": facility, "message": message}
        if held:
            fields["repeated"] = held
        self._log.log(record.levelno, "kafka_client", **fields)
