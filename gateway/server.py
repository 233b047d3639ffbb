"""Running the gateway: settings in, uvicorn serving the app with a Kafka sink until SIGTERM."""

from __future__ import annotations

import gc

import uvicorn

from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.sink import KafkaRawSink
from gateway.spool.forwarder import SpoolForwarder
from gateway.spool.journal import Spool
from processors import logs, tracing
from processors.errors import ConfigError

log = logs.get("kycstream.gateway")


def build(settings: GatewaySettings) -> tuple[uvicorn.Config, KafkaRawSink]:
    settings.require_sources()
    server = settings.gateway
    sink = KafkaRawSink(
        settings.kafka, settings.topics, produce_timeout_s=server.produce_timeout_s, linger_ms=server.linger_ms
    )
    metrics = GatewayMetrics()
    spool, forwarder = _spool(settings, metrics)

    def drain() -> None:
        left = sink.close(timeout=server.produce_timeout_s)
        spooled = forwarder.stop(server.spool.drain_on_exit_s) if forwarder is not None else 0
        log.info("gateway_stopped", undelivered=left, left_in_spool=spooled)

    forwarding = (lambda: forwarder.running) if forwarder is not None else None
    app = create_app(settings, sink, on_shutdown=drain, spool=spool, metrics=metrics, forwarding=forwarding)
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is trusted only from gateway.trusted_proxies
        server_header=False,
        timeout_graceful_shutdown=int(server.produce_timeout_s) + 5,
    )
    return config, sink


def _spool(settings: GatewaySettings, metrics: GatewayMetrics) -> tuple[Spool | None, SpoolForwarder | None]:
    """The spool and its forwarder when a source spools; what a previous process left is forwarded."""
    if not settings.spooling:
        return None, None
    server = settings.gateway
    try:
        spool = Spool(server.spool_dir, server.spool.max_bytes, server.spool.max_age_s).open()
    except OSError as exc:
        raise ConfigError(
            f"gateway.spool_dir {server.spool_dir}: {exc.strerror} (sources {', '.join(settings.spooling)} spool: "
            "give the gateway a writable directory on a volume that outlives it, KYCSTREAM_GATEWAY__SPOOL_DIR)"
        ) from exc
    forwarder = SpoolForwarder(
        spool,
        settings.kafka,
        settings.topics.raw,
        on_forwarded=metrics.spool_forwarded.inc,
        on_failed=lambda error, n: metrics.spool_forward_failures.labels(error).inc(n),
        dedup_window_s=settings.gateway.spool.dedup_window_s,
        on_past_dedup_window=metrics.spool_forwarded_past_dedup_window.inc,
    ).start()
    log.info("spool_open", directory=str(server.spool_dir), sources=settings.spooling, records=spool.records)
    return spool, forwarder


def serve(settings: GatewaySettings) -> None:
    tracing.setup("kycstream-gateway")
    config, _ = build(settings)
    log.info(
        "gateway_starting", host=settings.gateway.host, port=settings.gateway.port, sources=sorted(settings.sources)
    )
    # What start-up allocated lives as long as the process: keep it out of the collector's full
    # passes, which otherwise stall the event loop for tens of ms (the gateway's p99 under load).
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run()
