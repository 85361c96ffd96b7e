"""Command-line monitoring: ``status``, ``inspect``, ``control``, ``events`` and ``monitor``.

Each command that talks to workers takes ``-d/--destination`` (worker host
names, repeatable or comma-separated), ``-t/--timeout`` (seconds to collect
replies) and ``--json`` (machine-readable output instead of the human one). A
command nobody answers exits with status 1, as Celery's does.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import click

from polyq.exceptions import PolyqError

__all__ = ["control", "events", "exposure_warnings", "inspect", "monitor", "status"]

F = Callable[..., Any]


def _common(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True, help="print JSON")(fn)
    fn = click.option(
        "-t",
        "--timeout",
        type=float,
        default=1.0,
        show_default=True,
        help="seconds to wait for replies",
    )(fn)
    fn = click.option(
        "-d",
        "--destination",
        multiple=True,
        help="worker host name(s) (repeat or comma-separate; default: all)",
    )(fn)
    return fn


def _destination(values: tuple[str, ...]) -> list[str] | None:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def _app(ctx: click.Context) -> Any:
    return ctx.find_root().obj.app


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except PolyqError as exc:
        from polyq.url import redact

        raise click.ClickException(redact(str(exc))) from None


def _show(replies: list[dict[str, Any]], as_json: bool, render: Callable[[Any], list[str]]) -> None:
    if as_json:
        merged: dict[str, Any] = {}
        for r in replies:
            merged.update(r)
        click.echo(json.dumps(merged, indent=2, sort_keys=True, default=str))
    else:
        for r in replies:
            for host, answer in r.items():
                error = isinstance(answer, dict) and "error" in answer
                click.echo(f"-> {host}: {'ERROR' if error else 'OK'}")
                for line in render(answer):
                    click.echo(f"    {line}")
    if not replies:
        raise click.ClickException("no worker replied within the timeout (are workers running?)")


def _render_ok(answer: Any) -> list[str]:
    if isinstance(answer, dict):
        return [str(answer.get("error") or answer.get("ok") or answer)]
    return [str(answer)]


def _render_jobs(answer: Any) -> list[str]:
    if isinstance(answer, dict):
        return _render_ok(answer)
    if not answer:
        return ["- empty -"]
    lines = []
    for job in answer:
        started = ""
        if job.get("time_start"):
            started = " started " + datetime.datetime.fromtimestamp(job["time_start"]).strftime(
                "%H:%M:%S"
            )
        lines.append(
            f"* {job['name']}[{job['id']}] queue={job.get('queue')}"
            f" args={job.get('args')} kwargs={job.get('kwargs')}{started}"
        )
    return lines


def _render_list(answer: Any) -> list[str]:
    if isinstance(answer, dict):
        return _render_ok(answer)
    return [f"* {item['name'] if isinstance(item, dict) else item}" for item in answer] or [
        "- empty -"
    ]


def _render_stats(answer: Any) -> list[str]:
    return json.dumps(answer, indent=2, sort_keys=True, default=str).splitlines()


# -- status -------------------------------------------------------------------------


@click.command()
@_common
@click.pass_context
def status(ctx: click.Context, destination: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """List the workers that answer a ping."""
    app = _app(ctx)
    replies = _run(lambda: app.control.ping(destination=_destination(destination), timeout=timeout))
    if as_json:
        _show(replies, True, _render_ok)
        return
    for r in replies:
        for host in r:
            click.echo(f"{host}: OK")
    if not replies:
        raise click.ClickException("no worker replied within the timeout (are workers running?)")
    click.echo(f"\n{len(replies)} node{'s' if len(replies) != 1 else ''} online.")


# -- inspect ------------------------------------------------------------------------


@click.group()
def inspect() -> None:
    """Ask workers what they are doing (replies within --timeout)."""


def _inspect_command(name: str, render: Callable[[Any], list[str]], doc: str) -> None:
    @inspect.command(name, help=doc)
    @_common
    @click.pass_context
    def command(
        ctx: click.Context, destination: tuple[str, ...], timeout: float, as_json: bool
    ) -> None:
        app = _app(ctx)
        asker = app.control.inspect(destination=_destination(destination), timeout=timeout)
        _show(_run(getattr(asker, name)), as_json, render)


_inspect_command("active", _render_jobs, "Tasks running now.")
_inspect_command("reserved", _render_jobs, "Tasks prefetched, waiting for a pool slot.")
_inspect_command("registered", _render_list, "Task names each worker runs.")
_inspect_command("stats", _render_stats, "Pool, counters, uptime, queues, broker.")
_inspect_command("ping", _render_ok, "Ping workers.")
_inspect_command("active_queues", _render_list, "Queues each worker consumes.")
_inspect_command("revoked", _render_list, "Revoked task ids each worker knows.")


@inspect.command("scheduled")
@click.option("-Q", "--queues", help="comma-separated queues (default: all the broker knows)")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def inspect_scheduled(ctx: click.Context, queues: str | None, limit: int, as_json: bool) -> None:
    """Delayed tasks (countdown/eta) waiting in the broker, soonest first."""
    app = _app(ctx)
    names = [q.strip() for q in queues.split(",")] if queues else None
    found = _run(lambda: app.control.inspect().scheduled(names, limit))
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    if not app.transport.capabilities.inspect_scheduled:
        click.echo(f"note: {app.transport.describe()} cannot list delayed messages", err=True)
    if not found:
        click.echo("- no scheduled tasks -")
    for m in found:
        eta = datetime.datetime.fromtimestamp(m["eta"]).isoformat(timespec="seconds")
        click.echo(f"* {eta}  {m['name']}[{m['id']}] queue={m['queue']} priority={m['priority']}")


# -- control ------------------------------------------------------------------------


@click.group()
def control() -> None:
    """Change workers at run time: rate limits, pool size, queues, revokes, shutdown."""


def _control(
    ctx: click.Context,
    method: str,
    destination: tuple[str, ...],
    timeout: float,
    as_json: bool,
    *args: Any,
    **kwargs: Any,
) -> None:
    app = _app(ctx)
    fn = getattr(app.control, method)
    replies = _run(
        lambda: fn(*args, destination=_destination(destination), timeout=timeout, **kwargs)
    )
    _show(replies, as_json, _render_ok)


@control.command("rate_limit")
@click.argument("task_name")
@click.argument("rate")
@_common
@click.pass_context
def control_rate_limit(
    ctx: click.Context,
    task_name: str,
    rate: str,
    destination: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Set TASK_NAME's rate limit per worker: 10/s, 100/m, 1000/h, or 0 for none."""
    _control(
        ctx,
        "rate_limit",
        destination,
        timeout,
        as_json,
        task_name,
        None if rate in ("0", "none") else rate,
    )


@control.command("time_limit")
@click.argument("task_name")
@click.argument("soft", type=float)
@click.argument("hard", type=float, required=False)
@_common
@click.pass_context
def control_time_limit(
    ctx: click.Context,
    task_name: str,
    soft: float,
    hard: float | None,
    destination: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Set TASK_NAME's soft (and hard) time limit in seconds; 0 removes one."""
    _control(
        ctx, "time_limit", destination, timeout, as_json, task_name, soft or None, hard or None
    )


@control.command("shutdown")
@_common
@click.pass_context
def control_shutdown(
    ctx: click.Context, destination: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Warm-stop workers (running tasks finish)."""
    _control(ctx, "shutdown", destination, timeout, as_json)


@control.command("pool_grow")
@click.argument("n", type=int, default=1)
@_common
@click.pass_context
def control_pool_grow(
    ctx: click.Context, n: int, destination: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Add N pool processes/threads."""
    _control(ctx, "pool_grow", destination, timeout, as_json, n)


@control.command("pool_shrink")
@click.argument("n", type=int, default=1)
@_common
@click.pass_context
def control_pool_shrink(
    ctx: click.Context, n: int, destination: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Remove N pool processes/threads (never below one)."""
    _control(ctx, "pool_shrink", destination, timeout, as_json, n)


@control.command("add_consumer")
@click.argument("queue")
@_common
@click.pass_context
def control_add_consumer(
    ctx: click.Context, queue: str, destination: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Make workers consume QUEUE too."""
    _control(ctx, "add_consumer", destination, timeout, as_json, queue)


@control.command("cancel_consumer")
@click.argument("queue")
@_common
@click.pass_context
def control_cancel_consumer(
    ctx: click.Context, queue: str, destination: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Make workers stop consuming QUEUE."""
    _control(ctx, "cancel_consumer", destination, timeout, as_json, queue)


@control.command("revoke")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="also kill it if running (prefork pool)")
@click.option("--signal", "signame", default="SIGTERM", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def control_revoke(
    ctx: click.Context, task_ids: tuple[str, ...], terminate: bool, signame: str, as_json: bool
) -> None:
    """Revoke tasks (durable: they stay revoked across worker restarts)."""
    app = _app(ctx)
    _run(lambda: app.control.revoke(list(task_ids), terminate=terminate, signal=signame))
    if as_json:
        click.echo(json.dumps({"revoked": list(task_ids), "terminate": terminate}))
    else:
        click.echo(
            f"revoked {len(task_ids)} task(s){' (terminating running ones)' if terminate else ''}"
        )


# -- events -------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON event per line")
@click.option("--duration", type=float, help="stop after this many seconds")
@click.pass_context
def events(ctx: click.Context, as_json: bool, duration: float | None) -> None:
    """Print events as workers send them (workers need -E)."""
    from polyq.events import EventReceiver

    app = _app(ctx)
    receiver = EventReceiver(app)
    _run(receiver.open)
    try:
        for event in receiver.events(timeout=duration):
            if as_json:
                click.echo(json.dumps(event, default=str))
                continue
            when = datetime.datetime.fromtimestamp(event.get("timestamp", 0)).strftime(
                "%H:%M:%S.%f"
            )
            extra = {
                k: v
                for k, v in event.items()
                if k not in ("type", "hostname", "timestamp", "pid", "uuid", "name")
            }
            subject = f"{event.get('name', '')}[{event['uuid']}]" if event.get("uuid") else ""
            click.echo(f"{when[:-3]} {event.get('hostname')} {event['type']} {subject} {extra}")
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()


# -- monitor ------------------------------------------------------------------------


#: Addresses that reach only this machine.
LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--port", type=int, default=5555, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="interface to bind (0.0.0.0 exposes it to the network: set --basic-auth or --token)",
)
@click.option(
    "--basic-auth",
    envvar="POLYQ_MONITOR_BASIC_AUTH",
    help="user:password required by every page and API call",
)
@click.option(
    "--token",
    envvar="POLYQ_MONITOR_TOKEN",
    help="bearer token accepted instead (Authorization: Bearer <token>)",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="a Host name to answer besides localhost, 127.0.0.1, [::1] and --address "
    "(repeatable; .example.com matches subdomains; default: the monitor_allowed_hosts setting)",
)
@click.option(
    "--max-tasks",
    type=click.IntRange(min=1),
    help="tasks kept in memory, oldest dropped (default: monitor_max_tasks, 10000)",
)
@click.option(
    "--max-workers",
    type=click.IntRange(min=1),
    help="workers kept in memory (default: monitor_max_workers, 5000)",
)
@click.option(
    "--max-task-names",
    type=click.IntRange(min=1),
    help="task names kept as metric labels; others count as '(other)' "
    "(default: monitor_max_task_names, 1000)",
)
@click.pass_context
def monitor(
    ctx: click.Context,
    port: int,
    address: str,
    basic_auth: str | None,
    token: str | None,
    allowed_hosts: tuple[str, ...],
    max_tasks: int | None,
    max_workers: int | None,
    max_task_names: int | None,
) -> None:
    """Run the web dashboard (pip install 'polyq[monitor]')."""
    try:
        from polyq.monitor.web import Monitor
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs Flask and prometheus-client ({exc}); pip install 'polyq[monitor]'"
        ) from None
    if basic_auth and ":" not in basic_auth:
        raise click.BadParameter("write it as user:password", param_hint="--basic-auth")
    app = _app(ctx)
    mon = _run(
        lambda: Monitor(
            app,
            basic_auth=basic_auth,
            token=token,
            max_tasks=max_tasks,
            max_workers=max_workers,
            max_task_names=max_task_names,
            allowed_hosts=allowed_hosts or None,
        )
    )
    for warning in exposure_warnings(address, bool(basic_auth or token), mon.allowed_hosts):
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"polyq monitor on http://{address}:{port}/ (broker {app.transport.describe()})", err=True
    )
    mon.serve(address, port)


def exposure_warnings(address: str, authenticated: bool, allowed: tuple[str, ...]) -> list[str]:
    """What to warn about before serving on ``address``: none on a loopback address."""
    if address in LOOPBACK_ADDRESSES:
        return []
    out = []
    if not authenticated:
        out.append(
            f"dashboard on {address} without --basic-auth or --token; anyone who can "
            "reach it can revoke tasks and stop workers"
        )
    extra = [h for h in allowed if h not in LOOPBACK_ADDRESSES]
    if "*" in allowed:
        out.append(
            "--allowed-host '*' answers any Host name: a DNS-rebinding page can reach "
            "the dashboard unless a proxy in front checks the Host"
        )
    elif not extra:
        wildcard = address in ("0.0.0.0", "::", "")
        out.append(
            "no --allowed-host: requests naming this machine by another name than "
            + ("localhost" if wildcard else f"{address} or localhost")
            + " get 400; add --allowed-host NAME for each name it is reached by"
        )
    return out
