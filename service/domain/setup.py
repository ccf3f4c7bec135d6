"""Expected failures of setup: what stops a process or an operator's command before it can
do its work (a database without its schema, a dependency out of reach, a bad setting, a port
in use).

Each is a plain ``Exception``, not a ``ServiceError``: none of them is an answer to an API
client. Its text is one line that says what is wrong and what to do; the entry points print
exactly that line and exit non-zero, without a traceback.
"""

from __future__ import annotations

MIGRATE_HINT = "run `python -m service migrate`"


class SetupError(Exception):
    """An expected failure; ``str(error)`` is one line: what is wrong, and what to do."""


class SchemaMissing(SetupError):
    """The database, or its schema, does not exist yet."""


class SchemaBehind(SetupError):
    """The database lacks migrations this version ships."""


class Unreachable(SetupError):
    """A dependency (PostgreSQL, RabbitMQ) does not answer."""


class Refused(SetupError):
    """A dependency answered but refused us (credentials, permissions)."""


class PortTaken(SetupError):
    """The address to listen on is in use, or not an address of this machine."""


class BadSettings(SetupError):
    """A setting (environment variable) has a value that cannot be used."""


class QueueMissing(SetupError):
    """A queue the API and the workers declare at start-up does not exist (yet)."""
