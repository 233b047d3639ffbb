"""The gateway bench's baselines, served exactly as the gateway is (gateway/server.py's uvicorn settings).

bare    a Starlette app whose webhook route only answers 200: the ceiling of Starlette on uvicorn
naive   the handler people write first: read the body, produce it to the raw topic, flush, answer
        200 (durable, but one broker round trip per request, and the flush blocks the event loop)

  .venv/bin/python bench/apps.py bare --port 8081
  KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python bench/apps.py naive --port 8082 --topic T
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/ (bench/gateway.py)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

METHODS = ["POST", "PUT", "PATCH"]


def bare() -> Starlette:
    async def handle(request: Request) -> Response:
        return Response(b'{"status":"accepted"}', media_type="application/json")

    return Starlette(routes=[Route("/webhooks/{source}", handle, methods=METHODS)])


def naive(bootstrap: str, topic: str) -> Starlette:
    from confluent_kafka import Producer

    from processors.kafka import config
    from processors.settings import KafkaSettings

    # The same durable producer settings as the gateway (acks=all, idempotence, lz4).
    producer = Producer(config.producer(KafkaSettings(bootstrap_servers=bootstrap), **{"linger.ms": 1}))

    async def handle(request: Request) -> Response:
        body = await request.body()
        producer.produce(topic, value=body, key=request.headers.get("webhook-id"))
        if producer.flush(5) != 0:
            return JSONResponse({"error": "kafka_unavailable"}, status_code=503)
        return JSONResponse({"status": "accepted"})

    return Starlette(routes=[Route("/webhooks/{source}", handle, methods=METHODS)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("app", choices=("bare", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="bench.naive.raw")
    args = parser.parse_args()
    app = bare() if args.app == "bare" else naive(os.environ["KAFKA_BOOTSTRAP_SERVERS"], args.topic)
    # Same as gateway/server.py: uvicorn's defaults (uvloop and httptools when installed), one worker.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
