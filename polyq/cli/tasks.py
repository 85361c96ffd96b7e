"""``polyq call``, ``result``, ``purge`` and ``queues``: tasks and queues by hand."""

from __future__ import annotations

import datetime

import click

from polyq.cli.root import CliContext, json_arg, main, show_where
from polyq.exceptions import PolyqError

__all__ = ["call", "purge", "queues", "result"]


@main.command()
@click.argument("name")
@click.option("-a", "--args", help="JSON list of positional arguments")
@click.option("-k", "--kwargs", help="JSON object of keyword arguments")
@click.option("--countdown", type=float)
@click.option("--eta", help="ISO 8601 time")
@click.option("--expires", type=float, help="seconds from now")
@click.option("-Q", "--queue")
@click.option("--priority", type=click.IntRange(0, 9))
@click.option("--wait", "wait_for", type=float, help="wait this many seconds for the result")
@click.pass_obj
def call(
    obj: CliContext,
    name: str,
    args: str | None,
    kwargs: str | None,
    countdown: float | None,
    eta: str | None,
    expires: float | None,
    queue: str | None,
    priority: int | None,
    wait_for: float | None,
) -> None:
    """Send task NAME and print its id."""
    app = obj.app
    show_where(app)
    when = datetime.datetime.fromisoformat(eta) if eta else None
    result = app.send_task(
        name,
        json_arg(args, list, "--args"),
        json_arg(kwargs, dict, "--kwargs"),
        countdown=countdown,
        eta=when,
        expires=expires,
        queue=queue,
        priority=priority,
    )
    click.echo(result.id)
    if wait_for:
        value = result.get(timeout=wait_for, propagate=False)
        click.echo(f"{result.state}: {value!r}")


@main.command()
@click.argument("task_id")
@click.option("--traceback", "show_tb", is_flag=True, help="show the traceback of a failure")
@click.option("--wait", "wait_for", type=float, help="wait this many seconds for it to finish")
@click.pass_obj
def result(obj: CliContext, task_id: str, show_tb: bool, wait_for: float | None) -> None:
    """Show the state and result of a task."""
    res = obj.app.AsyncResult(task_id)
    if wait_for:
        try:
            res.get(timeout=wait_for, propagate=False)
        except PolyqError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{res.state}: {res.result!r}")
    if show_tb and res.traceback:
        click.echo(res.traceback)


@main.command()
@click.option("-Q", "--queues", help="comma-separated queues (default: the default queue)")
@click.option("-f", "--force", is_flag=True, help="do not ask for confirmation")
@click.pass_obj
def purge(obj: CliContext, queues: str | None, force: bool) -> None:
    """Delete every waiting message in the queues."""
    app = obj.app
    names = [q.strip() for q in queues.split(",")] if queues else [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    total = sum(app.transport.purge(q) for q in names)
    click.echo(f"purged {total} message(s) from {', '.join(names)}")


@main.command()
@click.pass_obj
def queues(obj: CliContext) -> None:
    """List queues with the number of messages in each."""
    app = obj.app
    transport = app.transport
    names = sorted(set(transport.queues()) | {app.conf.task_default_queue})
    click.echo(f"{'queue':30} {'messages':>9} {'dead letters':>13}")
    for name in names:
        dead = len(transport.dead_letters(name, 10000)) if transport.capabilities.dead_letter else 0
        click.echo(f"{name:30} {transport.size(name):>9} {dead:>13}")
