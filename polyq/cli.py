"""The ``polyq`` command: ``polyq -A proj worker -c 4`` and friends."""

from __future__ import annotations

import datetime
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import click

from polyq import states
from polyq.app import Polyq
from polyq.exceptions import PolyqError
from polyq.loader import find_app
from polyq.url import redact

__all__ = ["find_app", "main"]


class _Ctx:
    def __init__(self, app_path: str | None, broker: str | None, backend: str | None) -> None:
        self.app_path = app_path
        self.broker = broker
        self.backend = backend
        self._app: Polyq | None = None

    @property
    def app(self) -> Polyq:
        if self._app is None:
            app = find_app(self.app_path) if self.app_path else Polyq("polyq-cli")
            if self.broker:
                app.conf.broker_url = self.broker
            if self.backend:
                app.conf.result_backend = self.backend
            self._app = app
        return self._app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_path", envvar="POLYQ_APP", help="module[:attribute] of the app")
@click.option("-b", "--broker", help="broker URL (overrides the app's)")
@click.option("--result-backend", help="result backend URL (overrides the app's)")
@click.version_option(package_name="polyq")
@click.pass_context
def main(
    ctx: click.Context, app_path: str | None, broker: str | None, result_backend: str | None
) -> None:
    """polyq: a distributed task queue. Run `polyq demo` to see it work."""
    ctx.obj = _Ctx(app_path, broker, result_backend)


def _where(app: Polyq) -> None:
    click.echo(f"broker:  {redact(app.broker_url)}", err=True)
    click.echo(f"backend: {redact(app.backend_url)}", err=True)


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
    obj: _Ctx,
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
    _where(app)
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


def _json_arg(value: str | None, kind: type, what: str) -> Any:
    if not value:
        return kind()
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be JSON ({exc}), e.g. '[1, 2]'") from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {kind.__name__}")
    return parsed


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
    obj: _Ctx,
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
    _where(app)
    when = datetime.datetime.fromisoformat(eta) if eta else None
    result = app.send_task(
        name,
        _json_arg(args, list, "--args"),
        _json_arg(kwargs, dict, "--kwargs"),
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
def result(obj: _Ctx, task_id: str, show_tb: bool, wait_for: float | None) -> None:
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
def purge(obj: _Ctx, queues: str | None, force: bool) -> None:
    """Delete every waiting message in the queues."""
    app = obj.app
    names = [q.strip() for q in queues.split(",")] if queues else [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    total = sum(app.transport.purge(q) for q in names)
    click.echo(f"purged {total} message(s) from {', '.join(names)}")


@main.command()
@click.pass_obj
def queues(obj: _Ctx) -> None:
    """List queues with the number of messages in each."""
    app = obj.app
    transport = app.transport
    names = sorted(set(transport.queues()) | {app.conf.task_default_queue})
    click.echo(f"{'queue':30} {'messages':>9} {'dead letters':>13}")
    for name in names:
        dead = len(transport.dead_letters(name, 10000)) if transport.capabilities.dead_letter else 0
        click.echo(f"{name:30} {transport.size(name):>9} {dead:>13}")


@main.group()
def dlq() -> None:
    """Dead letters: messages polyq gave up on, with the reason."""


@dlq.command("list")
@click.option("-Q", "--queue", help="queue (default: the default queue)")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_obj
def dlq_list(obj: _Ctx, queue: str | None, limit: int) -> None:
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
def dlq_show(obj: _Ctx, message_id: str, queue: str | None) -> None:
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
def dlq_replay(obj: _Ctx, queue: str | None, ids: tuple[str, ...]) -> None:
    """Put dead letters back on their queue."""
    app = obj.app
    name = queue or app.conf.task_default_queue
    count = app.transport.replay_dead_letters(name, list(ids) or None)
    click.echo(f"replayed {count} message(s) to {name}")


@dlq.command("purge")
@click.option("-Q", "--queue")
@click.option("-f", "--force", is_flag=True)
@click.pass_obj
def dlq_purge(obj: _Ctx, queue: str | None, force: bool) -> None:
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
def db_init(obj: _Ctx) -> None:
    """Create (or upgrade) polyq's tables in the broker and backend databases."""
    app = obj.app
    for part in (app.transport, app.backend):
        create = getattr(part, "create_schema", None)
        if create is None:
            click.echo(f"{part.describe()}: not a SQL store, nothing to do")
        else:
            create()
            click.echo(f"{part.describe()}: schema ready")


@db.command("cleanup")
@click.pass_obj
def db_cleanup(obj: _Ctx) -> None:
    """Delete expired results (and old broadcast rows of a SQL broker) now."""
    click.echo(f"deleted {obj.app.backend.cleanup()} expired record(s)")
    prune = getattr(obj.app.transport, "cleanup", None)
    if prune is not None:
        click.echo(f"deleted {prune()} old broadcast row(s)")


@main.command()
@click.option(
    "-n", "--tasks", "count", type=click.IntRange(4, 10000), default=40, show_default=True
)
@click.option("-c", "--concurrency", type=int, default=2, show_default=True)
@click.option("--keep", is_flag=True, help="keep the demo's database afterwards")
def demo(count: int, concurrency: int, keep: bool) -> None:
    """Run polyq's main job on the embedded default (SQLite, no server).

    Starts a worker process, sends a batch of tasks (one retries, one fails),
    shows their progress and prints the results.
    """
    started = time.monotonic()
    directory = tempfile.mkdtemp(prefix="polyq-demo-")
    url = f"sqlite:///{os.path.join(directory, 'polyq.sqlite3')}"
    os.environ["POLYQ_BROKER_URL"] = url
    os.environ["POLYQ_RESULT_BACKEND"] = url
    from polyq import demo as demo_tasks

    app = demo_tasks.app
    click.echo(f"polyq demo: broker and results in {redact(url)}")
    env = {**os.environ, "POLYQ_BROKER_URL": url, "POLYQ_RESULT_BACKEND": url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polyq",
            "-A",
            "polyq.demo",
            "worker",
            "-c",
            str(concurrency),
            "--loglevel",
            "ERROR",
            "-n",
            "demo@%h",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        results = [demo_tasks.add.delay(i, i) for i in range(count - 2)]
        results.append(demo_tasks.flaky.delay(7))
        results.append(demo_tasks.boom.delay("this one fails on purpose"))
        click.echo(f"sent {len(results)} tasks to a worker with {concurrency} processes")
        with click.progressbar(length=len(results), label="running") as bar:
            done: set[str] = set()
            deadline = time.monotonic() + 60
            while len(done) < len(results) and time.monotonic() < deadline:
                for r in results:
                    if r.id not in done and r.ready():
                        done.add(r.id)
                        bar.update(1)
                if proc.poll() is not None:
                    raise click.ClickException(f"the demo worker exited with {proc.returncode}")
                time.sleep(0.05)
        by_state: dict[str, int] = {}
        for r in results:
            by_state[r.state] = by_state.get(r.state, 0) + 1
        sums = [r.get(propagate=False) for r in results[:5]]
        click.echo(f"add(i, i) for i in 0..4 -> {sums}")
        click.echo(
            f"flaky(7) -> {results[-2].get(propagate=False)!r} after {results[-2].retries} retry"
        )
        click.echo(f"boom(...) -> {results[-1].state}: {results[-1].result!r}")
        elapsed = time.monotonic() - started
        summary = ", ".join(f"{n} {s}" for s, n in sorted(by_state.items()))
        click.echo(f"summary: {summary} in {elapsed:.1f}s")
        expected = {states.SUCCESS: len(results) - 1, states.FAILURE: 1}
        if by_state != expected:
            raise click.ClickException(f"unexpected outcome {by_state}, wanted {expected}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        app.close()
        if not keep:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


# Monitoring and control commands (polyq/monitor/cli.py).
from polyq.monitor import cli as _monitor_cli  # noqa: E402

main.add_command(_monitor_cli.status)
main.add_command(_monitor_cli.inspect)
main.add_command(_monitor_cli.control)
main.add_command(_monitor_cli.events)
main.add_command(_monitor_cli.monitor)

main.add_command(importlib.import_module("polyq.beat").beat)


if __name__ == "__main__":  # pragma: no cover
    main()
