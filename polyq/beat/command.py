"""The ``polyq beat`` command (run a beat, or ``--list`` the entries)."""

from __future__ import annotations

import datetime
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from polyq.beat.entries import EntryStatus
from polyq.beat.scheduler import Beat
from polyq.exceptions import PolyqError
from polyq.url import redact

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["beat"]


def _fmt(value: datetime.datetime | None, tz: datetime.tzinfo) -> str:
    if value is None:
        return "never"
    return value.astimezone(tz).isoformat(sep=" ", timespec="seconds")


@click.command("beat")
@click.option("--list", "show_list", is_flag=True, help="show entries, last and next runs; exit")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--max-interval", type=float, help="longest sleep between checks, seconds")
@click.option("--lease-time", type=float, help="leader lease, seconds (beat_lease_time)")
@click.option("-s", "--schedule", "schedule_file", hidden=True, help="Celery's; ignored")
@click.pass_obj
def beat(
    obj: Any,
    show_list: bool,
    loglevel: str,
    max_interval: float | None,
    lease_time: float | None,
    schedule_file: str | None,
) -> None:
    """Send periodic tasks (beat_schedule). Several beats may run: one leads."""
    app: Polyq = obj.app
    if schedule_file:
        click.echo(
            "polyq beat: -s/--schedule ignored: the state lives in the result backend", err=True
        )
    try:
        b = Beat(app, max_interval=max_interval, lease_time=lease_time)
        if show_list:
            _print_list(b)
            return
    except PolyqError as exc:
        raise click.ClickException(redact(str(exc))) from None
    from polyq.utils.log import setup_logging

    setup_logging(
        loglevel,
        app.conf.worker_log_format,
        app.conf.worker_task_log_format,
        app.conf.worker_hijack_root_logger,
    )
    click.echo(f"broker:  {redact(app.broker_url)}", err=True)
    click.echo(f"backend: {redact(app.backend_url)}", err=True)

    def on_signal(signum: int, frame: Any) -> None:
        b.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    b.run()


def _print_list(b: Beat) -> None:
    leader = b.leader()
    click.echo(f"leader:   {leader or 'none (no beat running)'}")
    click.echo(f"timezone: {b.tz}")
    rows: Sequence[EntryStatus] = b.status()
    if not rows:
        click.echo("beat_schedule is empty")
    for s in rows:
        click.echo(f"\n{s.name}  ->  {s.task}  [{s.schedule}]")
        last = _fmt(s.last_scheduled, b.tz)
        if s.last_sent is not None:
            last += f" (sent {_fmt(s.last_sent, b.tz)} by {s.sent_by}, id {s.task_id})"
        click.echo(f"  last run: {last}")
        click.echo(f"  next run: {_fmt(s.next_run, b.tz)}")
        click.echo(f"  runs:     {s.total_run_count}")
