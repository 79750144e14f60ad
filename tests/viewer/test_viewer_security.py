"""The viewer's server toward the network: only its own pages may open a WebSocket, a bare
TCP connect/close leaves stderr clean, and a --host of another machine is named as such."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from geometry.errors import UserError
from viewer.ports import check_port_free
from viewer.server import allowed_request

REPO = Path(__file__).resolve().parents[2]


def _handshake(port: int, origin: str | None) -> int:
    """HTTP status of a WebSocket handshake to 127.0.0.1:port (101: accepted)."""
    import viser
    import websockets.asyncio.client as ws_client
    from websockets.exceptions import InvalidStatus

    async def go() -> int:
        try:
            async with ws_client.connect(f"ws://127.0.0.1:{port}", origin=origin,
                                         open_timeout=10,
                                         subprotocols=[f"viser-v{viser.__version__}"]):
                return 101
        except InvalidStatus as err:
            return err.response.status_code

    return asyncio.run(go())


def _raw_handshake_status(port: int, host: str, origin: str) -> int:
    """HTTP status of a hand-written WebSocket upgrade with the given Host and Origin (what
    a page on a DNS name rebound to 127.0.0.1 sends)."""
    request = (f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return int(s.recv(100).split(b" ")[1])


def test_websocket_from_a_foreign_origin_is_refused():
    from viewer.server import start_server

    server = start_server(port=0)
    try:
        port = server.get_port()
        assert _handshake(port, "http://evil.example") == 403
        # a DNS name rebound to 127.0.0.1: the origin and the Host both name it
        assert _raw_handshake_status(port, f"evil.example:{port}",
                                     f"http://evil.example:{port}") == 403
        assert _raw_handshake_status(port, f"127.0.0.1:{port}",
                                     f"http://127.0.0.1:{port}") == 101
        assert _handshake(port, "null") == 403
        # the viewer's own pages
        assert _handshake(port, f"http://127.0.0.1:{port}") == 101
        assert _handshake(port, f"http://localhost:{port}") == 101
        assert _handshake(port, None) == 101  # not a browser
    finally:
        server.stop()


@pytest.mark.parametrize(("host", "origin", "bound", "expected"), [
    ("127.0.0.1:8080", "http://127.0.0.1:8080", "127.0.0.1", True),
    ("localhost:9000", "http://localhost:9000", "127.0.0.1", True),  # an SSH tunnel
    ("[::1]:8080", "http://[::1]:8080", "::1", True),
    ("10.1.2.3:8080", "http://10.1.2.3:8080", "0.0.0.0", True),  # the address dialled
    ("10.1.2.3:8080", "http://10.1.2.3:8081", "0.0.0.0", False),  # another port there
    ("10.1.2.3:8080", "http://evil.example", "0.0.0.0", False),
    ("evil.example:8080", None, "127.0.0.1", False),
    (None, None, "127.0.0.1", False),
    ("127.0.0.1:8080", "file://", "127.0.0.1", False),
])
def test_allowed_request(host, origin, bound, expected):
    assert allowed_request(host, origin, bound, ("10.1.2.3", 8080)) is expected


def test_bare_tcp_connect_close_leaves_stderr_clean():
    script = textwrap.dedent("""
        import socket, sys, time
        from viewer.server import start_server
        server = start_server(port=0)
        port = server.get_port()
        sys.stderr.write("READY\\n")
        for _ in range(3):
            socket.create_connection(("127.0.0.1", port)).close()
        time.sleep(0.5)
        server.stop()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    after = proc.stderr.split("READY", 1)[1]
    assert "Traceback" not in after and "handshake failed" not in after, after


def test_real_handshake_errors_are_still_logged():
    """Only the client-closed-first case is silenced: a malformed request is reported."""
    script = textwrap.dedent("""
        import socket, sys, time
        from viewer.server import start_server
        server = start_server(port=0)
        sys.stderr.write("READY\\n")
        with socket.create_connection(("127.0.0.1", server.get_port())) as s:
            s.sendall(b"GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nBad Header\\r\\n\\r\\n")
            s.recv(100)
        time.sleep(0.5)
        server.stop()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert "handshake failed" in proc.stderr.split("READY", 1)[1]


def test_host_of_another_machine_is_named_so():
    # TEST-NET-1 (RFC 5737): never an address of this machine
    with pytest.raises(UserError, match="not an address of this machine"):
        check_port_free("192.0.2.7", 8080)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    probe.listen(1)
    try:
        with pytest.raises(UserError, match="busy"):
            check_port_free("127.0.0.1", probe.getsockname()[1])
    finally:
        probe.close()
