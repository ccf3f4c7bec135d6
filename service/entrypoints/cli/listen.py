"""Whether the API can listen where ``GRPC_LISTEN`` (and ``HTTP_LISTEN``) say, asked before
anything starts.

gRPC reports a taken port only as a ``RuntimeError`` after the database is connected, and
prints a C-core log line of its own; a test bind first gives one clear line at once.
"""

from __future__ import annotations

import errno
import socket

from service.domain.setup import PortTaken


def ensure_can_listen(listen: str, *, shared: bool = False, setting: str = "GRPC_LISTEN") -> None:
    """Bind each address ``listen`` (host:port) resolves to, and let go at once.

    ``shared``: the port is to be shared with sibling processes (SO_REUSEPORT, as
    ``API_PROCESSES`` > 1 does), so a sibling holding it is no conflict. Raises ``PortTaken``.
    """
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise PortTaken(f"{setting}={listen} is not host:port") from None
    if port == 0:
        return  # the system picks a free port
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise PortTaken(f"cannot resolve the host of {setting}={listen}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # The options gRPC binds with: a listener in TIME_WAIT is no conflict.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortTaken(
                        f"cannot listen on {listen}: the port is in use (another API still"
                        f" running?); stop it or set {setting} to a free host:port"
                    ) from None
                raise PortTaken(
                    f"cannot listen on {listen}: {exc.strerror}; set {setting} to an address"
                    " of this machine"
                ) from None
