"""``slotkeeper daemon``: reclaim loop + Prometheus ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import logging
import signal
import sys

import click

from slotkeeper.broker.client import Broker
from slotkeeper.broker.collector import CACHE_SECONDS
from slotkeeper.broker.daemon import DEFAULT_BATCH, DEFAULT_INTERVAL, Daemon
from slotkeeper.broker.errors import BrokerUnavailable
from slotkeeper.broker.httpserver import MAX_CONNECTIONS, REQUEST_TIMEOUT
from slotkeeper.cli.context import App, pass_app

LEVELS = ("debug", "info", "warning", "error")


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=DEFAULT_INTERVAL,
    show_default=True,
    help="Seconds between reclaim passes.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Entries per reclaim script call (bounds each call).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address for /metrics, /healthz, the status page and /api/v1/ (0.0.0.0: every "
    "interface).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9808,
    show_default=True,
    help="Port for HTTP (0: any free port, logged).",
)
@click.option("--no-metrics", is_flag=True, help="Do not serve HTTP at all.")
@click.option(
    "--http-timeout",
    type=click.FloatRange(min=0.1),
    default=REQUEST_TIMEOUT,
    show_default=True,
    help="Seconds an HTTP client may take to send its request.",
)
@click.option(
    "--http-max-connections",
    type=click.IntRange(1, 10_000),
    default=MAX_CONNECTIONS,
    show_default=True,
    help="HTTP connections served at once; more are answered 503 at once.",
)
@click.option(
    "--scrape-cache",
    type=click.FloatRange(min=0.0),
    default=CACHE_SECONDS,
    show_default=True,
    help="Seconds a read of the namespace serves further scrapes (0: read on every scrape).",
)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option("--once", is_flag=True, help="Run one reclaim pass and exit (cron, tests).")
@click.option(
    "--per-key-metrics",
    type=click.IntRange(0, 100_000),
    default=0,
    metavar="N",
    help="Also export series for up to N keys of each template (most recently active first) and "
    "N run-scoped limits of each executor tag (most recently created first). Default 0: a "
    "template's keys are aggregated under the template's name, runs under run-*:TAG.",
)
@pass_app
def daemon(
    app: App,
    interval: float,
    batch: int,
    metrics_host: str,
    metrics_port: int,
    no_metrics: bool,
    http_timeout: float,
    http_max_connections: int,
    scrape_cache: float,
    log_level: str,
    once: bool,
    per_key_metrics: int,
) -> None:
    """Reclaim expired leases and tickets promptly, wake waiters, export metrics.

    Any number of daemons may run against one Redis. SIGTERM/SIGINT finish the current batch and
    exit 0. Correctness never depends on the daemon: every script also reclaims lazily.
    """
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    log = logging.getLogger("slotkeeper.daemon")
    try:
        url = app.resolved_url()
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    broker = Broker.from_url(url, app.namespace)
    health = Broker.from_url(url, app.namespace, socket_timeout=2.0, socket_connect_timeout=1.0)
    d = Daemon(
        broker,
        interval=interval,
        batch=batch,
        health_broker=health,
        scrape_cache=scrape_cache,
        per_key_metrics=per_key_metrics,
    )
    signal.signal(signal.SIGTERM, d.stop)
    signal.signal(signal.SIGINT, d.stop)
    srv = None
    if not no_metrics and not once:
        try:
            srv = d.serve_http(metrics_host, metrics_port, http_timeout, http_max_connections)
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror or exc}"
            ) from None
        log.info(
            "serving %s/metrics, %s/healthz and %s/livez; status page %s/ and JSON %s/api/v1/",
            *([srv.url] * 5),
        )
    log.info(
        "reclaiming namespace %r on %s every %gs (batch %d)",
        app.namespace,
        broker.url_redacted,
        interval,
        batch,
    )
    try:
        d.run(once=once)
    finally:
        if srv is not None:
            srv.close()
        broker.close()
        health.close()
