"""The root ``polyq`` command group, its context (the app of ``-A``) and helpers
shared by the commands."""

from __future__ import annotations

import json
from typing import Any

import click

from polyq.app import Polyq
from polyq.loader import find_app
from polyq.url import redact

__all__ = ["CliContext", "find_app", "json_arg", "main", "show_where"]


class CliContext:
    """What the root command knows: the ``-A`` app path and URL overrides; the app
    is found (imported) on first use, so ``--help`` imports nothing."""

    def __init__(self, app_path: str | None, broker: str | None, backend: str | None) -> None:
        self.app_path = app_path
        self.broker = broker
        self.backend = backend
        self._app: Polyq | None = None

    @property
    def app(self) -> Polyq:
        """The app of ``-A`` (or a default one), with ``-b``/``--result-backend`` applied."""
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
    ctx.obj = CliContext(app_path, broker, result_backend)


def show_where(app: Polyq) -> None:
    """Print the broker and backend URLs (passwords hidden) on stderr."""
    click.echo(f"broker:  {redact(app.broker_url)}", err=True)
    click.echo(f"backend: {redact(app.backend_url)}", err=True)


def json_arg(value: str | None, kind: type, what: str) -> Any:
    """Parse a JSON command-line argument that must be a ``kind`` (empty: ``kind()``)."""
    if not value:
        return kind()
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be JSON ({exc}), e.g. '[1, 2]'") from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {kind.__name__}")
    return parsed
