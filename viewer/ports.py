"""The viewer's port, checked before anything heavy is imported or read."""

from __future__ import annotations

import errno
import socket

from geometry.errors import UserError


def check_port_free(host: str, port: int) -> None:
    """Raise ``UserError`` if ``host:port`` cannot be bound (busy, or a bad host).

    viser silently moves to the next port when one is busy; the user asked for this one,
    so a busy port is an error they can act on.
    """
    if port == 0:
        return
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a port number; use 1-65535 (or 0 for any).")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(f"cannot resolve --host {host} ({err.strerror}); use an address such "
                        "as 127.0.0.1 or 0.0.0.0.") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # the server's own socket uses SO_REUSEADDR, so test the same way: only a socket
        # that is really listening (or bound) blocks, not one in TIME_WAIT
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:  # a valid address, but another machine's
                raise UserError(f"--host {host} is not an address of this machine; use "
                                "127.0.0.1 (this machine only) or 0.0.0.0 (every "
                                "interface).") from None
            raise UserError(f"port {port} on {host} is busy ({err.strerror}); stop the other "
                            "viewer or pass --port with a free port.") from None
