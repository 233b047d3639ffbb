"""The fault-injection proxy itself: forwards, cuts (drop + refuse), restores on the same port, delays."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import wait_until
from tests.tcpproxy import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_cuts_and_restores_on_the_same_port(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo) as proxy:
        port = proxy.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert _roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
            proxy.cut()
            assert proxy.is_cut and proxy.connections == 0
            with pytest.raises(OSError):  # the live connection is gone...
                sock.sendall(b"more")
                if not sock.recv(10):
                    raise ConnectionResetError("closed")
        with pytest.raises(ConnectionRefusedError):  # ...and new ones are refused
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        proxy.restore()
        assert proxy.port == port and not proxy.is_cut
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert _roundtrip(sock, b"back") == b"back"


def test_latency_delays_each_direction_without_limiting_throughput(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        proxy.latency = 0.2
        started = time.monotonic()
        assert _roundtrip(sock, b"ping") == b"ping"
        assert 0.4 <= time.monotonic() - started < 1.5  # there and back
        started = time.monotonic()
        for i in range(20):  # pipelined: 20 round trips overlap, so about one round trip in all
            sock.sendall(f"{i:04d}".encode())
        got = b""
        while len(got) < 80:
            got += sock.recv(100)
        assert got == b"".join(f"{i:04d}".encode() for i in range(20))
        assert time.monotonic() - started < 1.5


def test_delay_open_links_slows_the_connections_open_now_only(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as slow:
        assert _roundtrip(slow, b"open") == b"open"  # the proxy has the link (it registers it on accept)
        proxy.delay_open_links(0.5)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as fresh:
            assert _roundtrip(fresh, b"fast") == b"fast"
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        assert _roundtrip(slow, b"slow") == b"slow"
        assert 1.0 <= time.monotonic() - started < 2.5  # there and back
        proxy.delay_open_links(0)
        started = time.monotonic()
        assert _roundtrip(slow, b"again") == b"again"
        assert time.monotonic() - started < 0.5


def test_a_client_gone_behind_a_delayed_link_loses_what_had_not_arrived() -> None:
    received: list[bytes] = []
    closed = threading.Event()

    class _Record(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                while data := self.request.recv(65536):
                    received.append(data)
            finally:
                closed.set()  # the proxy closed (or reset) its side: nothing more can arrive on it

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Record)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with TcpProxy("127.0.0.1", server.server_address[1]) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as doomed:
                doomed.sendall(b"arrives")
                wait_until(lambda: received == [b"arrives"], 5, "the first bytes arrived", every=0.01)
                proxy.delay_open_links(0.3)
                doomed.sendall(b"never arrives")
            wait_until(lambda: proxy.connections == 0, 5, "the link torn down once the client is gone", every=0.01)
            wait_until(closed.is_set, 5, "the server saw the proxy close the upstream connection", every=0.01)
            assert received == [b"arrives"]
    finally:
        server.shutdown()
        server.server_close()
