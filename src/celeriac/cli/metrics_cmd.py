"""``celeriac metrics``: a Prometheus exporter for a broker and its workers (see
:mod:`celeriac.metrics` for what it counts and why from where)."""

from __future__ import annotations

import errno
import signal
import threading

import click

from celeriac.brokers import redacted
from celeriac.cli.main import Context, cli, loglevel_option, setup_logging
from celeriac.errors import ConfigurationError
from celeriac.text import printable

#: Seconds a Redis gets to answer each of the exporter's calls (see ``wait_at_most``).
BROKER_WAIT = 5.0

#: celery-exporter's port, which dashboards and scrape configs made for Celery name.
DEFAULT_PORT = 9808


@cli.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to serve /metrics on (0: any free port, said at start).",
)
@click.option(
    "--host",
    # Every interface, as node_exporter and celery-exporter listen: Prometheus scrapes from
    # another host or container, and a metrics page holds task names and counts, no data.
    default="0.0.0.0",  # noqa: S104
    show_default=True,
    help="Address to listen on; 127.0.0.1 keeps it to this host.",
)
@loglevel_option
@click.pass_obj
def metrics(obj: Context, port: int, host: str, loglevel: str | None) -> None:
    """Serve Prometheus metrics at http://HOST:PORT/metrics until Ctrl-C or SIGTERM.

    Counts every worker's task events from when the exporter starts
    (celeriac_task_events_total, celeriac_task_runtime_seconds), and reads each queue's
    ready, delayed, in-flight and dead counts and the live workers at each scrape
    (celeriac_queue_tasks, celeriac_workers, celeriac_broker_up). Run one per broker,
    anywhere it can reach.

    Example: celeriac -A shop.tasks metrics --port 9808
    """
    try:
        from prometheus_client import (
            CollectorRegistry,
            disable_created_metrics,
            start_http_server,
        )
    except ImportError:
        raise ConfigurationError(
            "celeriac metrics needs prometheus-client, which is not installed: "
            "pip install 'celeriac[metrics]'"
        ) from None
    from celeriac.event_feed import EventFeed
    from celeriac.metrics import TaskMetrics

    # A frozen Redis (SIGSTOP, a paused VM) fails a scrape in this many seconds, with
    # celeriac_broker_up 0, inside Prometheus's 10 s scrape timeout: at the broker's 30 s
    # socket timeout the scrape itself timed out, and said nothing of why.
    obj.wait_at_most(BROKER_WAIT)
    app = obj.app
    setup_logging(loglevel or app.conf.worker_log_level)
    missing = obj.missing_broker_file()
    if missing is not None:  # opened, it would be made empty, and every count read 0
        raise ConfigurationError(
            f"no SQLite broker at {missing}: no worker or producer has used it. Start the "
            "exporter in the folder the workers run in, or give the file's absolute path "
            "(-b sqlite:////srv/shop/celeriac.db)"
        )
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape noise
    registry = CollectorRegistry()
    counts = TaskMetrics(app, registry)
    feed = EventFeed(app.broker, after=None)  # counts what happens from now on
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as exc:
        raise ConfigurationError(_cannot_listen(host, port, exc)) from None
    bound = server.server_address[1]
    click.echo(
        f"serving Prometheus metrics on http://{_url_host(host)}:{bound}/metrics for the "
        f"broker {printable(redacted(app.conf.broker_url))} (Ctrl-C stops)",
        err=True,
    )
    if not app.conf.worker_send_task_events:
        click.echo(
            "note: this app's configuration turns task events off "
            "(worker_send_task_events=False): workers started with it write none, so "
            "celeriac_task_events_total stays at 0. Queue and worker counts are read anyway.",
            err=True,
        )
    stop = threading.Event()
    # SIGTERM (systemd, Kubernetes) and Ctrl-C are how an exporter stops: exit 0, at once.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        counts.follow(feed, stop)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    """Why the exporter cannot listen on ``host:port``, and what to do.

    Example:
        >>> print(_cannot_listen("0.0.0.0", 9808, OSError(98, "Address already in use")))
        cannot listen on 0.0.0.0:9808: the port is in use (another exporter, or a second \
celeriac metrics?). Pass a free one: --port 9809
    """
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {host}:{port}: the port is in use (another exporter, or a "
            f"second celeriac metrics?). Pass a free one: --port {port + 1}"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {host}:{port}: not allowed (ports under 1024 need root)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc} (check --host)"


def _url_host(host: str) -> str:
    """The host to show in the URL: a wildcard address is not one to open."""
    return "localhost" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
