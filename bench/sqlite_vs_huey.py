"""polyq on SQLite beside Huey's SqliteHuey, same disk, same run.

For each system: enqueue N no-op tasks one call at a time with no worker running
(enqueue rate); start the worker with two processes and time until all N ran
(drain rate, from worker start, boot included); then K sequential calls that
each wait for their result (round trip p50/p99). Each no-op appends 8 bytes to a
file (O_APPEND), so completions are counted the same way for both.

    python bench/sqlite_vs_huey.py [--tasks 5000] [--round-trips 300]

polyq runs with its defaults (late ack, leases, prefork, results stored for
``echo``; the no-op ignores its result). Huey: ``huey_consumer -w 2 -k process``,
results stored (its default), early dequeue (its only mode).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _wait_count(path: str, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.path.getsize(path) >= 8 * n:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{path}: fewer than {n} completions")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50 * 1000, p99 * 1000


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


POLYQ_TASKS = textwrap.dedent(
    """
    import os
    from polyq import Polyq
    app = Polyq("bq")
    COUNT = os.environ["BENCH_COUNT_FILE"]

    @app.task(ignore_result=True)
    def noop(i):
        fd = os.open(COUNT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"12345678")
        os.close(fd)

    @app.task
    def echo(i):
        return i
    """
)

HUEY_TASKS = textwrap.dedent(
    """
    import os
    from huey import SqliteHuey
    huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"])
    COUNT = os.environ["BENCH_COUNT_FILE"]

    @huey.task()
    def noop(i):
        fd = os.open(COUNT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"12345678")
        os.close(fd)

    @huey.task()
    def echo(i):
        return i
    """
)


def bench_polyq(workdir: str, n: int, k: int) -> dict[str, float]:
    db = os.path.join(workdir, "polyq.sqlite3")
    count = os.path.join(workdir, "polyq.count")
    with open(os.path.join(workdir, "bq.py"), "w") as f:
        f.write(POLYQ_TASKS)
    env = {
        **os.environ,
        "POLYQ_BROKER_URL": f"sqlite:///{db}",
        "POLYQ_RESULT_BACKEND": f"sqlite:///{db}",
        "BENCH_COUNT_FILE": count,
    }
    os.environ.update(env)
    sys.path.insert(0, workdir)
    import bq  # type: ignore[import-not-found]

    bq.noop.delay(-1)  # create the schema before timing
    bq.app.transport.purge("celery")
    started = time.perf_counter()
    for i in range(n):
        bq.noop.delay(i)
    enqueue = n / (time.perf_counter() - started)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyq", "-A", "bq", "worker", "-c", "2", "-l", "WARNING"],
        cwd=workdir,
        env=env,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_count(count, n)
        drain = n / (time.perf_counter() - started)
        for i in range(20):
            bq.echo.delay(i).get(timeout=30)
        samples = []
        for i in range(k):
            t = time.perf_counter()
            assert bq.echo.delay(i).get(timeout=30) == i
            samples.append(time.perf_counter() - t)
    finally:
        _stop(proc)
    p50, p99 = _percentiles(samples)
    return {"enqueue": enqueue, "drain": drain, "p50": p50, "p99": p99}


def bench_huey(workdir: str, n: int, k: int) -> dict[str, float]:
    db = os.path.join(workdir, "huey.sqlite3")
    count = os.path.join(workdir, "huey.count")
    with open(os.path.join(workdir, "hq.py"), "w") as f:
        f.write(HUEY_TASKS)
    env = {**os.environ, "BENCH_HUEY_DB": db, "BENCH_COUNT_FILE": count}
    os.environ.update(env)
    sys.path.insert(0, workdir)
    import hq  # type: ignore[import-not-found]

    started = time.perf_counter()
    for i in range(n):
        hq.noop(i)
    enqueue = n / (time.perf_counter() - started)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "hq.huey",
            "-w",
            "2",
            "-k",
            "process",
            "-q",
        ],
        cwd=workdir,
        env=env,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_count(count, n)
        drain = n / (time.perf_counter() - started)
        for i in range(10):
            hq.echo(i).get(blocking=True, timeout=30)
        samples = []
        for i in range(k):
            t = time.perf_counter()
            assert hq.echo(i).get(blocking=True, timeout=30) == i
            samples.append(time.perf_counter() - t)
    finally:
        _stop(proc)
    p50, p99 = _percentiles(samples)
    return {"enqueue": enqueue, "drain": drain, "p50": p50, "p99": p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--round-trips", type=int, default=300)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="polyq-bench-", dir=os.environ.get("BENCH_DIR"))
    rows = []
    for name, fn in (("polyq (sqlite)", bench_polyq), ("huey (SqliteHuey)", bench_huey)):
        workdir = os.path.join(base, name.split()[0])
        os.makedirs(workdir)
        rows.append((name, fn(workdir, args.tasks, args.round_trips)))
    print(
        f"\nN={args.tasks} tasks, {args.round_trips} round trips, 2 worker processes, "
        f"files in {base}"
    )
    print(f"{'system':20} {'enqueue/s':>10} {'drain/s':>10} {'RT p50 ms':>10} {'RT p99 ms':>10}")
    for name, r in rows:
        print(
            f"{name:20} {r['enqueue']:>10,.0f} {r['drain']:>10,.0f} {r['p50']:>10.2f} "
            f"{r['p99']:>10.2f}"
        )
    (_, p), (_, h) = rows
    print(
        f"ratio polyq/huey: enqueue {p['enqueue'] / h['enqueue']:.2f}x, "
        f"drain {p['drain'] / h['drain']:.2f}x, RT p50 {h['p50'] / p['p50']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
