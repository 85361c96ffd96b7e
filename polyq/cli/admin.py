"""``polyq dlq ...`` (dead letters) and ``polyq db ...`` (SQL schema, cleanup)."""

from __future__ import annotations

import datetime
import json

import click

from polyq.backend import ResultBackend
from polyq.cli.root import CliContext, main
from polyq.transport import Transport

__all__ = ["db", "dlq"]


@main.group()
def dlq() -> None:
    """Dead letters: messages polyq gave up on, with the reason."""


@dlq.command("list")
@click.option("-Q", "--queue", help="queue (default: the default queue)")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_obj
def dlq_list(obj: CliContext, queue: str | None, limit: int) -> None:
    """List dead letters with their reasons."""
    app = obj.app
    name = queue or app.conf.task_default_queue
    letters = app.transport.dead_letters(name, limit)
    if not letters:
        click.echo(f"no dead letters in {name}")
    for d in letters:
        when = datetime.datetime.fromtimestamp(d.failed_at).isoformat(timespec="seconds")
        click.echo(
            f"{d.message_id}  {when}  {d.headers.get('task', '?')}[{d.headers.get('id', '?')}]"
            f"  {d.reason}"
        )


@dlq.command("show")
@click.argument("message_id")
@click.option("-Q", "--queue")
@click.pass_obj
def dlq_show(obj: CliContext, message_id: str, queue: str | None) -> None:
    """Show one dead letter: reason, headers and body."""
    app = obj.app
    name = queue or app.conf.task_default_queue
    for d in app.transport.dead_letters(name, 100000):
        if d.message_id == message_id:
            click.echo(f"message: {d.message_id}\nqueue:   {d.queue}\nreason:  {d.reason}")
            click.echo(f"failed:  {datetime.datetime.fromtimestamp(d.failed_at).isoformat()}")
            click.echo("headers: " + json.dumps(d.headers, indent=2, sort_keys=True))
            click.echo("body:    " + d.body[:2000].decode("utf-8", "backslashreplace"))
            return
    raise click.ClickException(f"no dead letter {message_id} in {name}")


@dlq.command("replay")
@click.option("-Q", "--queue")
@click.option("--id", "ids", multiple=True, help="message ids (default: all)")
@click.pass_obj
def dlq_replay(obj: CliContext, queue: str | None, ids: tuple[str, ...]) -> None:
    """Put dead letters back on their queue."""
    app = obj.app
    name = queue or app.conf.task_default_queue
    count = app.transport.replay_dead_letters(name, list(ids) or None)
    click.echo(f"replayed {count} message(s) to {name}")


@dlq.command("purge")
@click.option("-Q", "--queue")
@click.option("-f", "--force", is_flag=True)
@click.pass_obj
def dlq_purge(obj: CliContext, queue: str | None, force: bool) -> None:
    """Delete the dead letters of a queue."""
    app = obj.app
    name = queue or app.conf.task_default_queue
    if not force:
        click.confirm(f"Delete the dead letters of {name}?", abort=True)
    click.echo(f"deleted {app.transport.purge_dead_letters(name)} dead letter(s)")


@main.group()
def db() -> None:
    """SQL broker and result store: create the schema, delete expired results."""


@db.command("init")
@click.pass_obj
def db_init(obj: CliContext) -> None:
    """Create (or upgrade) polyq's tables in the broker and backend databases."""
    app = obj.app
    for part in (app.transport, app.backend):
        # Every plugin has create_schema (the contract's default does nothing); only
        # those that keep tables override it, and only they have something to report.
        if type(part).create_schema in (Transport.create_schema, ResultBackend.create_schema):
            click.echo(f"{part.describe()}: keeps no schema, nothing to do")
        else:
            part.create_schema()
            click.echo(f"{part.describe()}: schema ready")


@db.command("cleanup")
@click.pass_obj
def db_cleanup(obj: CliContext) -> None:
    """Delete expired results (and old broadcast rows of a SQL broker) now."""
    click.echo(f"deleted {obj.app.backend.cleanup()} expired record(s)")
    transport = obj.app.transport
    if type(transport).cleanup is not Transport.cleanup:
        click.echo(f"deleted {transport.cleanup()} old broadcast row(s)")
