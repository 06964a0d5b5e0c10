"""Structured logging: one event name plus key-value pairs, as console text or JSON lines.

Code logs events, not sentences::

    log = get_logger(__name__)
    log.info("pod_started", pod=name, namespace=ns, container=container)

so that an operator can grep for ``pod_started`` and a log pipeline can index ``pod=``.

Two streams of records exist in the process: ours (structlog) and those of libraries that
use the standard ``logging`` module (asyncio's "Task exception was never retrieved", grpc,
docker's urllib3). Both go through the same processors and renderer to stderr, so the journal
shows one format and one clock. The level applies to both.

``get_logger`` may be called at import time, before ``configure_logging`` runs: structlog
hands out lazy proxies that look the configuration up when they log. We keep that lookup on
every call (``cache_logger_on_first_use=False``) so reconfiguring (tests do, and ``run`` does
after parsing the config) takes effect everywhere; at a node agent's log rate the cost of
the lookup is noise.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger, Processor

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("console", "json")

# Marks the stdlib handler we install, so a second configure_logging replaces it instead of
# doubling every library line.
_HANDLER_NAME = "nodeagent"


def configure_logging(fmt: str, level: str) -> None:
    """Send our events and the stdlib's records to stderr as ``fmt`` ("console" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        level_no = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}"
        ) from None

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "json":
        # JSON needs the traceback as a string field; the console renderer formats it itself.
        shared += [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # Plain tracebacks: rich's default shows local variables, which can hold secrets
            # (env of a pod, tokens) and bloat the journal.
            exception_formatter=structlog.dev.plain_traceback,
        )

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_NamedLoggerFactory(),
        cache_logger_on_first_use=False,
    )

    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows its name, so add_logger_name works as for stdlib records."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedLoggerFactory:
    def __call__(self, *args: object) -> _NamedWriteLogger:
        # get_logger(name) passes the name through here (structlog's logger_factory_args).
        # sys.stderr is looked up per call, not captured once: whoever swaps it later (pytest's
        # capture, a daemonising wrapper) must not leave us writing to a closed file.
        return _NamedWriteLogger(sys.stderr, str(args[0]) if args else "")


class _StderrHandler(logging.Handler):
    """Writes stdlib records to whatever sys.stderr is at the time (see the factory above)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose events carry ``logger=name``; safe to call at import time."""
    return cast(FilteringBoundLogger, structlog.get_logger(name))
