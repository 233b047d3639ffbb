"""HTTP load generator for the gateway benchmarks, run as a separate process.

Two modes over keep-alive connections (raw asyncio protocol on uvloop, HTTP/1.1, one request in
flight per connection):

  fixed   open loop, wrk2-style: request i is due at start + i/rate whatever happened before; its
          latency is measured from when it was due, so a stalled server is charged for the
          requests that queued behind the stall (no coordinated omission).
  closed  as many requests as the connections allow, for `--duration` seconds (the fallback when
          wrk is not installed; wrk is preferred: it costs the machine less per request).

Every request is a ~1 KB Xendit `account.verification` webhook with the dev token, a unique
`data.id` and a unique `webhook-id` header, so every one is a new delivery with its own key.
Prints one JSON line with the figures. `--record FILE` also writes one line per request
(`request_id due sent done status`, monotonic seconds) for the end-to-end bench.

    .venv/bin/python bench/loadgen.py --port 8080 --mode fixed --rate 2000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import deque
from typing import Any

PLACEHOLDER = "{ID}"
TOKEN = "dev-secret"


def xendit_body_template(size: int = 1024) -> str:
    """A Xendit account.verification body of about `size` bytes; {ID} marks the unique id."""
    doc: dict[str, Any] = {
        "event": "account.verification",
        "business_id": "5f27a14a9bf05c73dd040bc8",
        "created": "2026-05-08T10:30:00.000Z",
        "data": {
            "id": PLACEHOLDER,
            "type": "INDIVIDUAL",
            "status": "LIVE",
            "kyc": {"status": "PASSED", "failure_reasons": []},
            "public_profile": {"business_name": "Bench Merchant"},
            "country": "ID",
            "created": "2026-05-08T10:29:58.000Z",
            "updated": "2026-05-08T10:30:00.000Z",
        },
        "padding": "",
    }
    text = json.dumps(doc, separators=(",", ":"))
    doc["padding"] = "x" * max(0, size - len(text) - 24 + len(PLACEHOLDER))
    return json.dumps(doc, separators=(",", ":"))


class Requests:
    """Builds the bytes of request i: unique id in the body and in webhook-id."""

    def __init__(self, host: str, port: int, path: str, salt: int) -> None:
        self.prefix, self.suffix = (part.encode() for part in xendit_body_template().split(PLACEHOLDER))
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"x-callback-token: {TOKEN}\r\n"
        ).encode()
        self.salt = salt

    def build(self, i: int) -> bytes:
        uid = f"{self.salt:08x}{i:016x}".encode()
        body = self.prefix + uid + self.suffix
        return (
            self.head
            + b"webhook-id: wh-"
            + uid
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `send` resolves to (status, body) of the response."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport instances
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def send(self, data: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def connect(host: str, port: int, count: int) -> list[Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _, protocol = await loop.create_connection(Connection, host, port)
        conns.append(protocol)
    return conns


def summary(
    latencies: list[float], started: float, ended: float, statuses: dict[int, int], errors: int
) -> dict[str, Any]:
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, round(q / 100 * (len(latencies) - 1)))] * 1000

    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    elapsed = ended - started
    return {
        "requests": len(latencies),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "seconds": round(elapsed, 3),
        "ok_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(pct(50), 3),
        "p90_ms": round(pct(90), 3),
        "p99_ms": round(pct(99), 3),
        "p999_ms": round(pct(99.9), 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else float("nan"),
    }


async def run_fixed(args: argparse.Namespace) -> dict[str, Any]:
    """Open loop: request i is due at start + i/rate; latency counts from its due time."""
    builder = Requests(args.host, args.port, args.path, args.salt)
    conns = await connect(args.host, args.port, args.connections)
    idle: deque[Connection] = deque(conns)
    waiting: deque[int] = deque()  # due requests with no free connection yet
    tasks: set[asyncio.Task[None]] = set()
    total = int(args.rate * args.duration)
    latencies: list[float] = []
    service: list[float] = []  # from the moment the request was written: what a closed loop would see
    statuses: dict[int, int] = {}
    errors = 0
    records: list[str] = []
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    finished = 0
    interval = 1.0 / args.rate
    start = time.monotonic() + 0.05

    def settle() -> None:
        nonlocal finished
        finished += 1
        if finished == total and not done.done():
            done.set_result(None)

    async def one(conn: Connection, i: int) -> None:
        nonlocal errors
        while True:
            due = start + i * interval
            sent = time.monotonic()
            try:
                status, body = await conn.send(builder.build(i))
            except ConnectionError:
                errors += 1
                settle()
                return
            now = time.monotonic()
            latencies.append(now - due)
            service.append(now - sent)
            statuses[status] = statuses.get(status, 0) + 1
            if args.record:
                rid = ""
                if status == 200:
                    rid = json.loads(body).get("request_id", "")
                records.append(f"{rid} {due:.6f} {sent:.6f} {now:.6f} {status}")
            settle()
            if not waiting:
                idle.append(conn)
                return
            i = waiting.popleft()

    i = 0
    while i < total:  # each tick: dispatch every request due by now, then yield until the next is due
        due_now = min(total, int((time.monotonic() - start) / interval) + 1)
        while i < due_now:
            if idle:
                task = loop.create_task(one(idle.popleft(), i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                waiting.append(i)
            i += 1
        await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
    await asyncio.wait_for(done, timeout=60 + args.duration)
    ended = time.monotonic()
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    if args.record:
        with open(args.record, "w") as f:
            f.write("\n".join(records) + "\n")
    out = summary(latencies, start, ended, statuses, errors)
    service.sort()
    out.update(
        mode="fixed",
        rate=args.rate,
        connections=args.connections,
        service_p50_ms=round(service[len(service) // 2] * 1000, 3) if service else None,
        service_p99_ms=round(service[int(len(service) * 0.99)] * 1000, 3) if service else None,
    )
    return out


async def run_closed(args: argparse.Namespace) -> dict[str, Any]:
    builder = Requests(args.host, args.port, args.path, args.salt)
    conns = await connect(args.host, args.port, args.connections)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    counter = 0
    start = time.monotonic()
    end = start + args.duration

    async def worker(conn: Connection) -> None:
        nonlocal counter, errors
        while time.monotonic() < end:
            counter += 1
            t = time.monotonic()
            try:
                status, _ = await conn.send(builder.build(counter))
            except ConnectionError:
                errors += 1
                return
            latencies.append(time.monotonic() - t)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker(c) for c in conns))
    ended = time.monotonic()
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    out = summary(latencies, start, ended, statuses, errors)
    out.update(mode="closed", connections=args.connections)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/webhooks/xendit")
    parser.add_argument("--mode", choices=("fixed", "closed"), default="fixed")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second (fixed mode)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--salt", type=int, default=os.getpid(), help="makes ids unique across runs")
    parser.add_argument("--record", help="write one line per request to this file (fixed mode)")
    args = parser.parse_args()
    coro = run_fixed(args) if args.mode == "fixed" else run_closed(args)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
