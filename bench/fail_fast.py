"""How long until a clear error, with the broker down or the credentials wrong.

For each broker (Redis, RabbitMQ, PostgreSQL, MySQL, SQS) and each failure (the
broker's port closed; wrong credentials where the broker has them), measures in a
fresh process:

* ``delay``: a producer's ``add.delay(1, 2)``: seconds until it raises, and what;
* ``worker``: ``polyq -A <app> worker -P solo``: seconds until it exits, and its
  exit code (``running`` if it still runs after ``--worker-limit`` seconds). With
  the broker down the worker is started with
  ``POLYQ_BROKER_CONNECTION_RETRY_ON_STARTUP=false`` (with the default it waits for
  the broker, as Celery's does).

Run it once per code base, e.g.::

    PYTHONPATH=/work/before python3 bench/fail_fast.py   # the old code
    PYTHONPATH=.            python3 bench/fail_fast.py   # this tree

Brokers: ``POLYQ_TEST_AMQP_URL``, ``POLYQ_TEST_POSTGRES_URL``, ``POLYQ_TEST_MYSQL_URL``
name running servers (their host, port and database are reused; the user or
password is replaced for the wrong-credentials case); a private ``redis-server``
with ``requirepass`` is started for Redis's. Nothing is written to the brokers
except by a producer that (unexpectedly) succeeds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

APP = textwrap.dedent(
    """
    import os
    from polyq import Polyq

    app = Polyq("ffapp", broker=os.environ["FF_BROKER"], backend="memory://")

    @app.task
    def add(x, y):
        return x + y
    """
)

PRODUCER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from ffapp import add
    started = time.monotonic()  # the call alone, not the interpreter's start
    try:
        add.delay(1, 2)
        outcome = "published"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:90]}"
    print(f"{time.monotonic() - started:.1f}\\t{outcome}")
    """
)


def free_port() -> int:
    """A TCP port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def with_netloc(url: str, user: str | None, password: str | None, port: int | None = None) -> str:
    """``url`` with its user, password and/or port replaced."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    auth = ""
    if user is not None:
        auth = user + (f":{password}" if password is not None else "") + "@"
    netloc = f"{auth}{host}:{port or parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def producer(workdir: Path, env: dict[str, str]) -> str:
    """Seconds and outcome of one ``.delay()`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", PRODUCER, str(workdir)],
        cwd=workdir,  # python -c puts the working directory first on sys.path
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return line or f"?\tcrashed: {proc.stderr.strip()[-200:]}"


def worker(workdir: Path, env: dict[str, str], limit: float) -> str:
    """Seconds until ``polyq worker`` exits and its exit code, or ``running``."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyq", "-A", "ffapp", "worker", "-P", "solo", "-l", "WARNING"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return f">{limit:.0f}\tstill running"
    last = (err.strip().splitlines() or [""])[-1][:90]
    return f"{time.monotonic() - started:.1f}\texit {proc.returncode}: {last}"


def cases(redis_auth_url: str | None) -> list[tuple[str, str, str]]:
    """(broker, failure, URL) for every case this machine can run."""
    closed = free_port()
    out = [("Redis", "down", f"redis://127.0.0.1:{closed}/0")]
    if redis_auth_url:
        out.append(("Redis", "wrong password", redis_auth_url))
    amqp = os.environ.get("POLYQ_TEST_AMQP_URL")
    if amqp:
        out.append(("RabbitMQ", "down", with_netloc(amqp, "guest", "guest", closed)))
        out.append(("RabbitMQ", "wrong password", with_netloc(amqp, "guest", "wrong")))
    pg = os.environ.get("POLYQ_TEST_POSTGRES_URL")
    if pg:
        out.append(("PostgreSQL", "down", with_netloc(pg, "postgres", None, closed)))
        out.append(("PostgreSQL", "unknown user", with_netloc(pg, "nosuchuser", "x")))
    my = os.environ.get("POLYQ_TEST_MYSQL_URL")
    if my:
        out.append(("MySQL", "down", with_netloc(my, "root", None, closed)))
        out.append(("MySQL", "unknown user", with_netloc(my, "nosuchuser", "x")))
    out.append(
        (
            "SQS",
            "down",
            f"sqs://k:s@localhost?region=us-east-1&endpoint_url=http://127.0.0.1:{closed}",
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker-limit", type=float, default=60.0)
    args = parser.parse_args()
    # Stopped by a signal: still end the private redis-server (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="polyq-failfast-"))
    (workdir / "ffapp.py").write_text(APP)
    redis_proc = None
    redis_url = None
    if shutil.which("redis-server"):
        port = free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--requirepass", "right"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        redis_url = f"redis://:wrong@127.0.0.1:{port}/0"
        time.sleep(0.3)
    base_env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ".")}
    base_env["PYTHONPATH"] = os.path.abspath(base_env["PYTHONPATH"])
    print("| broker | failure | `.delay()` s | raised | worker start s | worker |")
    print("| --- | --- | --- | --- | --- | --- |")
    try:
        for broker, failure, url in cases(redis_url):
            env = {**base_env, "FF_BROKER": url}
            took, raised = producer(workdir, env).split("\t", 1)
            if failure == "down":
                env["POLYQ_BROKER_CONNECTION_RETRY_ON_STARTUP"] = "false"
            w_took, w_outcome = worker(workdir, env, args.worker_limit).split("\t", 1)
            row = [broker, failure, took, raised.replace("|", "/"), w_took, w_outcome]
            print("| " + " | ".join(row).replace("\n", " ") + " |", flush=True)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
