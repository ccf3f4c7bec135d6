"""``python -m workers``: the command line of the worker process (``--help``, one-line
failures); the process itself is ``service.entrypoints.worker``.

Kept apart from ``service.entrypoints.cli.service``, which loads the gRPC side: the worker
process loads nothing of it.
"""

from __future__ import annotations

import click

from service.entrypoints.cli.failures import explained, load_settings, run_cli
from service.entrypoints.cli.helptext import WORKER_SETTINGS, SettingsCommand
from service.entrypoints.worker import main as run_workers


@click.command(
    cls=SettingsCommand,
    settings=WORKER_SETTINGS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def workers() -> None:
    """Run the worker pool until SIGTERM or Ctrl-C: consume the operation queue (and its
    dead-letter queue), relay the outbox, hand out again operations whose worker died, and
    remove expired operations. Run as many as you like, after python -m service migrate.

    On SIGTERM it stops taking messages, lets in-flight operations finish within
    WORKER_GRACE_SECONDS, and exits 0.
    """
    with explained():
        run_workers(load_settings())


def main() -> None:
    """``python -m workers``."""
    run_cli(workers, "python -m workers")
