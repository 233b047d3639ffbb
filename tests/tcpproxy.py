"""A small TCP proxy for fault tests: put it in front of a broker, then cut, restore or slow the link.

Runs its own asyncio loop in a daemon thread, so tests drive it with plain method calls:

    proxy = TcpProxy("127.0.0.1", broker_port).start()
    ...                       # clients connect to proxy.port (advertise it as the broker's listener)
    proxy.cut()               # every connection is dropped and new ones are refused (ECONNREFUSED)
    proxy.restore()           # listening again on the same port; clients reconnect by themselves
    proxy.latency = 0.3       # each byte arrives 0.3 s later, in both directions (throughput kept)
    proxy.delay_open_links(1.5)  # the same, only for the connections open now: clients connected
                                 # later (a test reading a topic) are not slowed; what a client
                                 # sent on such a link and that has not arrived when it dies is lost
    proxy.close()

Only for tests on this machine: it listens on 127.0.0.1 and forwards to one upstream address.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any

from processors.kafka.embedded import free_port

_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port or free_port(host)
        self.latency = 0.0  # seconds added to every chunk, each direction
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcpproxy-{self.port}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()

    # --- control (any thread) -------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    @property
    def is_cut(self) -> bool:
        return self._server is None

    @property
    def connections(self) -> int:
        return len(self._links)

    def cut(self) -> None:
        """Drop every connection and refuse new ones until restore()."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def delay_open_links(self, seconds: float) -> None:
        """Latency for the connections open now only (0 takes it back); proxy.latency is for the rest."""
        self._call(self._delay_links(seconds))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- inside the loop ----------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
                return
            except OSError:  # the port is still held by a closing socket: retry briefly
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # sleep: poll interval of a bounded retry (raises at its deadline)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop accepting first, so nothing new slips in
        for link in list(self._links):
            link.abort()
        self._links.clear()
        if server is not None:
            await server.wait_closed()

    async def _delay_links(self, seconds: float) -> None:
        for link in self._links:
            link.latency = seconds

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._server is None:
            client_w.transport.abort()
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        link = _Link(self, client_w, upstream_w)
        self._links.add(link)
        link.tasks = [
            asyncio.ensure_future(link.pump(client_r, upstream_w)),
            asyncio.ensure_future(link.pump(upstream_r, client_w)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        link.abort()
        self._links.discard(link)


class _Link:
    """One proxied connection: two pumps, each a delay line when latency is set."""

    def __init__(self, proxy: TcpProxy, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Future[None]] = []
        self.latency: float | None = None  # None: the proxy's

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.ensure_future(self._deliver(queue, dst))
        try:
            while True:
                try:
                    data = await src.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                latency = self.proxy.latency if self.latency is None else self.latency
                await queue.put((time.monotonic() + latency, data))
                if not data:
                    break
            if self.latency is not None and dst is self.writers[1]:
                # A client gone behind a delayed open link (a crash, in the fault tests) loses what it
                # sent that has not arrived yet: its delay line stands for its unsent buffers.
                return
            await writer
        finally:
            writer.cancel()
            for w in self.writers:  # one side closed: close the other, as a real peer would see it
                w.transport.abort()

    @staticmethod
    async def _deliver(queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                due, data = await queue.get()
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # sleep: the proxy's deliberate latency (the delay line)
                if not data:
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            return

    def abort(self) -> None:
        for w in self.writers:
            w.transport.abort()
        for task in self.tasks:
            task.cancel()
