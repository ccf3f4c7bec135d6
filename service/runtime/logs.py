"""Structured logs on stdout, with the bound request and operation IDs: one JSON object per
line, or, when stdout is a terminal (a person watching), readable ``key=value`` lines."""

from __future__ import annotations

import logging
import sys

import stamina.instrumentation
import structlog

# Tracebacks without local variables: locals can hold secrets and request payloads.
_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _render() -> list[structlog.types.Processor]:
    """The last processors: JSON lines for machines, coloured key=value lines in a terminal."""
    if sys.stdout.isatty():
        return [
            # Plain tracebacks: the default (rich) one prints local variables.
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        ]
    return [
        _TRACEBACKS,
        structlog.processors.EventRenamer("message"),
        structlog.processors.JSONRenderer(),
    ]


def configure(level: str = "INFO", component: str = "api") -> None:
    """Send our logs and the libraries' (stdlib logging) through one renderer: JSON lines,
    or key=value lines when stdout is a terminal."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[*_SHARED, *_render()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(component=component)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_render(),
            ],
        )
    )
    # runtime.retry writes one `retry.scheduled` line per retry with our name for the block;
    # stamina's own hook would add a second one naming it "<context block>".
    stamina.instrumentation.set_on_retry_hooks([])
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
