"""``polyq worker``: start a worker (with an embedded beat and liveness probe on request)."""

from __future__ import annotations

import click

from polyq.cli.root import CliContext, main, show_where
from polyq.exceptions import PolyqError
from polyq.url import redact

__all__ = ["worker"]


@main.command()
@click.option("-c", "--concurrency", type=int, help="child processes/threads (default: CPUs)")
@click.option("-Q", "--queues", help="comma-separated queues to consume")
@click.option("-n", "--hostname", help="node name, e.g. name@%h")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "solo", "asyncio"]))
@click.option("--prefetch-multiplier", type=int)
@click.option("--max-tasks-per-child", type=int)
@click.option("--max-memory-per-child", type=int, help="KiB of resident memory")
@click.option("--time-limit", type=float, help="hard limit, seconds (prefork)")
@click.option("--soft-time-limit", type=float, help="soft limit, seconds")
@click.option("-B", "--beat", "embed_beat", is_flag=True, help="also run polyq beat")
@click.option("-E", "--events", "send_events", is_flag=True, help="send task events (monitoring)")
@click.option("--heartbeat-file", help="touch this file every 5 s while live (liveness probe)")
@click.option("--health-port", type=int, help="serve GET /healthz on 127.0.0.1:PORT")
@click.pass_obj
def worker(
    obj: CliContext,
    concurrency: int | None,
    queues: str | None,
    hostname: str | None,
    loglevel: str,
    pool: str | None,
    prefetch_multiplier: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    time_limit: float | None,
    soft_time_limit: float | None,
    embed_beat: bool = False,
    send_events: bool = False,
    heartbeat_file: str | None = None,
    health_port: int | None = None,
) -> None:
    """Start a worker."""
    from polyq.utils.log import setup_logging
    from polyq.worker import Worker

    app = obj.app
    setup_logging(
        loglevel,
        app.conf.worker_log_format,
        app.conf.worker_task_log_format,
        app.conf.worker_hijack_root_logger,
    )
    try:
        w = Worker(
            app,
            concurrency=concurrency,
            queues=[q.strip() for q in queues.split(",")] if queues else None,
            hostname=hostname,
            pool=pool,
            prefetch_multiplier=prefetch_multiplier,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            send_events=send_events,
            app_path=obj.app_path,
        )
    except PolyqError as exc:
        raise click.ClickException(redact(str(exc))) from None
    show_where(app)
    click.echo(
        f"tasks:   {', '.join(sorted(n for n in app.tasks if not n.startswith('polyq.')))}",
        err=True,
    )
    if heartbeat_file or health_port:  # monitoring: liveness for orchestrators
        from polyq.monitor.liveness import Liveness

        Liveness(w, heartbeat_file, health_port).start()
    embedded = None
    if embed_beat:
        from polyq.beat import start_embedded

        try:
            embedded = start_embedded(app)
        except PolyqError as exc:
            raise click.ClickException(redact(str(exc))) from None
    try:
        w.start()
    finally:
        if embedded is not None:
            embedded.stop()
            embedded.join(10.0)
    if w.failure:
        raise click.ClickException(redact(w.failure))
