"""The ``polyq`` command: ``polyq -A proj worker -c 4`` and friends.

The root group is :func:`polyq.cli.root.main`; each module here adds its commands
to it (``serve``: worker; ``tasks``: call, result, purge, queues; ``admin``: dlq,
db; ``demo``), and this package adds the monitor's commands
(:mod:`polyq.monitor.cli`) and ``polyq beat``. The entry point is
``polyq.cli:main``.
"""

from polyq.beat import beat
from polyq.cli import admin, demo, serve, tasks
from polyq.cli.root import main
from polyq.loader import find_app
from polyq.monitor import cli as monitor_cli

for command in (
    monitor_cli.status,
    monitor_cli.inspect,
    monitor_cli.control,
    monitor_cli.events,
    monitor_cli.monitor,
    beat,
):
    main.add_command(command)

__all__ = ["admin", "demo", "find_app", "main", "serve", "tasks"]
