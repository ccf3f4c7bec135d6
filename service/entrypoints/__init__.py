"""Entry points, one module per process above the transports: ``api`` (and ``api_processes``)
and ``worker``; the transports ``grpc/`` and ``http/``; the operator's command lines ``cli/``
(``python -m service``, ``python -m workers``); ``client/``, the command-line client of the
public API."""
