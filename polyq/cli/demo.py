"""``polyq demo``: run the main job end to end on the embedded SQLite default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import click

from polyq import states
from polyq.cli.root import main
from polyq.url import redact

__all__ = ["demo"]


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
