"""polyq on Redis beside Celery and Dramatiq on the same Redis, in one run.

For every system, on a private ``redis-server`` (started here on a free port, no
persistence, flushed between systems):

1. **enqueue**: a fresh process sends N no-op tasks, one API call per task, with no
   worker running → tasks/s;
2. **drain**: the system's worker starts with 2 processes; every no-op does one
   Redis ``INCR bench:done`` (db 2), polled every 5 ms until it reaches N → tasks/s
   from the worker's start (boot included) and "steady" (from the first completion);
3. **round trip**: with the worker still up, K sequential ``echo(i)`` calls each
   wait for their result (the first 20 dropped) → p50/p99 in ms;
4. the worker's process group gets SIGTERM (SIGKILL after 15 s).

The peers run from a separate virtualenv made only for this benchmark (never a
dependency of polyq)::

    python -m venv --system-site-packages /tmp/benchvenv
    /tmp/benchvenv/bin/pip install "celery[redis]==5.7.0" "dramatiq[redis]==2.2.1"
    /tmp/benchvenv/bin/python bench/redis_peers.py --n 20000 --k 500 --repeat 3

(``--system-site-packages`` lets that interpreter import the installed polyq too.)
The no-op task stores no result in every system; ``echo`` stores one. This module is
also the task module every worker imports (``polyq -A bench.redis_peers:polyq_app``,
``celery -A bench.redis_peers:celery_app``, ``dramatiq bench.redis_peers:dramatiq_broker``),
configured through ``BENCH_REDIS`` (``redis://127.0.0.1:<port>``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COUNTER = "bench:done"

#: What each system is, for the table: worker command, ack mode, pool, results.
SYSTEMS: dict[str, dict[str, str]] = {
    "polyq": {
        "worker": "polyq -A bench.redis_peers:polyq_app worker -c 2 -l WARNING",
        "ack": "late (after the task; leases extended)",
        "pool": "prefork -c 2 (defaults)",
        "results": "no-op: ignore_result; echo: stored",
    },
    "polyq-threads": {
        "worker": "polyq -A bench.redis_peers:polyq_app worker -P threads -c 2 -l WARNING",
        "ack": "late (after the task; leases extended)",
        "pool": "threads -c 2 (informative variant)",
        "results": "no-op: ignore_result; echo: stored",
    },
    "celery": {
        "worker": "celery -A bench.redis_peers:celery_app worker -P prefork -c 2 -l WARNING",
        "ack": "early (Celery's default)",
        "pool": "prefork -c 2 (defaults: prefetch x4)",
        "results": "no-op: ignore_result; echo: stored",
    },
    "dramatiq-t1": {
        "worker": "dramatiq bench.redis_peers:dramatiq_broker -p 2 -t 1",
        "ack": "late (after the actor)",
        "pool": "2 processes x 1 thread",
        "results": "no-op: none; echo: Results middleware",
    },
    "dramatiq-t8": {
        "worker": "dramatiq bench.redis_peers:dramatiq_broker -p 2 -t 8",
        "ack": "late (after the actor)",
        "pool": "2 processes x 8 threads (its default)",
        "results": "no-op: none; echo: Results middleware",
    },
}

# -- the task modules (built on first use, in whichever process needs them) --------------

_built: dict[str, Any] = {}
_counter_client: Any = None


def _base() -> str:
    return os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379").rstrip("/")


def _count() -> None:
    global _counter_client
    if _counter_client is None:
        import redis

        _counter_client = redis.Redis.from_url(f"{_base()}/2")
    _counter_client.incr(COUNTER)


def _polyq() -> Any:
    from polyq.app import Polyq

    app = Polyq("bench", broker=f"{_base()}/0", backend=f"{_base()}/1")

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        _count()

    @app.task(name="bench.echo")
    def echo(i: int) -> int:
        return i

    return {"app": app, "noop": noop, "echo": echo}


def _celery() -> Any:
    from celery import Celery

    app = Celery("bench", broker=f"{_base()}/0", backend=f"{_base()}/1")
    app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        _count()

    @app.task(name="bench.echo")
    def echo(i: int) -> int:
        return i

    return {"app": app, "noop": noop, "echo": echo}


def _dramatiq() -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    results = RedisBackend(url=f"{_base()}/1")
    broker = RedisBroker(url=f"{_base()}/0")
    broker.add_middleware(Results(backend=results))
    dramatiq.set_broker(broker)

    def noop() -> None:
        _count()

    def echo(i: int) -> int:
        return i

    return {
        "broker": broker,
        "results": results,
        "noop": dramatiq.actor(noop, actor_name="noop", broker=broker),
        "echo": dramatiq.actor(echo, actor_name="echo", broker=broker, store_results=True),
    }


def _system(name: str) -> Any:
    family = name.split("-")[0]  # "polyq-threads" and "dramatiq-t8" share their app
    if family not in _built:
        _built[family] = {"polyq": _polyq, "celery": _celery, "dramatiq": _dramatiq}[family]()
    return _built[family]


def __getattr__(name: str) -> Any:
    """The apps the worker CLIs load: ``polyq_app``, ``celery_app``, ``dramatiq_broker``."""
    if name == "polyq_app":
        return _system("polyq")["app"]
    if name == "celery_app":
        return _system("celery")["app"]
    if name == "dramatiq_broker":
        return _system("dramatiq")["broker"]
    raise AttributeError(name)


# -- client phases (run in a fresh process each) -------------------------------------------


def enqueue(system: str, n: int) -> dict[str, float]:
    """Send ``n`` no-ops one call at a time; tasks/s."""
    tasks = _system(system)
    send = tasks["noop"].send if system.startswith("dramatiq") else tasks["noop"].delay
    send()  # connect and warm up outside the timing
    start = time.perf_counter()
    for _ in range(n - 1):
        send()
    return {"enqueue": (n - 1) / (time.perf_counter() - start)}


def bare(n: int) -> dict[str, float]:
    """The floor for one call per task: redis-py ``LPUSH`` of a 300-byte body per call."""
    import redis

    client = redis.Redis.from_url(f"{_base()}/3")
    body = b"x" * 300
    client.lpush("bench:bare", body)
    start = time.perf_counter()
    for _ in range(n - 1):
        client.lpush("bench:bare", body)
    rate = (n - 1) / (time.perf_counter() - start)
    client.delete("bench:bare")
    return {"enqueue": rate}


def roundtrip(system: str, k: int, warmup: int = 20) -> dict[str, float]:
    """``k`` sequential echo calls, each waiting for its result; p50/p99 in ms."""
    tasks = _system(system)
    samples = []
    for i in range(k + warmup):
        start = time.perf_counter()
        if system.startswith("dramatiq"):
            message = tasks["echo"].send(i)
            value = message.get_result(backend=tasks["results"], block=True, timeout=10_000)
        else:
            value = tasks["echo"].delay(i).get(timeout=10)
        samples.append(time.perf_counter() - start)
        assert value == i, (value, i)
    samples = sorted(samples[warmup:])
    return {
        "p50": statistics.median(samples) * 1000,
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
    }


# -- the harness ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(base: str) -> dict[str, str]:
    env = dict(os.environ, BENCH_REDIS=base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    return env


def _phase(base: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], env=_env(base), cwd=ROOT, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"phase {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's own process group (it was started in a new session)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_system(name: str, base: str, n: int, k: int, log: Path) -> dict[str, float]:
    import redis

    admin = redis.Redis.from_url(base)
    admin.flushall()  # our private server only
    figures = _phase(base, "enqueue", name, str(n))
    counter = redis.Redis.from_url(f"{base}/2")
    with log.open("ab") as sink:
        start = time.perf_counter()
        worker = subprocess.Popen(
            SYSTEMS[name]["worker"].split(), env=_env(base), cwd=ROOT, stdout=sink, stderr=sink,
            start_new_session=True,
        )  # fmt: skip
        try:
            first_at, first_count, done = None, 0, 0
            progress_at, last = start, 0
            while done < n:
                done = int(counter.get(COUNTER) or 0)
                now = time.perf_counter()
                if first_at is None and done > 0:
                    first_at, first_count = now, done
                if done != last:
                    progress_at, last = now, done
                if worker.poll() is not None:
                    raise RuntimeError(f"{name} worker exited early:\n{_tail(log)}")
                if now - progress_at > 30:
                    raise RuntimeError(f"{name} stalled at {done}/{n} for 30 s:\n{_tail(log)}")
                time.sleep(0.005)
            end = time.perf_counter()
            # enqueue sent n-1 timed calls plus one warm-up: n in all
            figures["drain"] = n / (end - start)
            assert first_at is not None
            figures["steady"] = (n - first_count) / max(end - first_at, 1e-9)
            figures.update(_phase(base, "roundtrip", name, str(k)))
        finally:
            _stop(worker)
            counter.close()
            admin.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="no-op tasks to enqueue and drain")
    parser.add_argument("--k", type=int, default=500, help="round trips to time")
    parser.add_argument("--repeat", type=int, default=1, help="runs per system (median shown)")
    parser.add_argument(
        "--systems",
        default="polyq,celery,dramatiq-t1,dramatiq-t8",
        help=f"comma-separated, from: {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="polyq-bench-") as tmp:
        port = _free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"redis://127.0.0.1:{port}"
        try:
            _wait_for(port)
            table = {}
            for name in args.systems.split(","):
                runs = []
                for _ in range(args.repeat):
                    try:
                        runs.append(
                            run_system(name, base, args.n, args.k, Path(tmp) / f"{name}.log")
                        )
                    except RuntimeError as exc:  # report it, measure the others
                        print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
                        continue
                    print(f"{name}: {runs[-1]}", file=sys.stderr, flush=True)
                if runs:
                    table[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            floors = [_phase(base, "bare", "-", str(args.n))["enqueue"] for _ in range(args.repeat)]
            args.floor = statistics.median(floors)
        finally:
            server.terminate()
            server.wait(10)
    _print(table, args)
    if args.json:
        args.json.write_text(json.dumps({**table, "bare-lpush": {"enqueue": args.floor}}, indent=2))


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the private redis-server did not start")


def _print(table: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\nN={args.n} no-op tasks, K={args.k} round trips, median of {args.repeat} run(s), "
        "one private loopback redis-server, 2 worker processes each\n"
    )
    head = "| system | ack | pool | results | enqueue/s | drain/s | steady/s | RT p50 ms | p99 ms |"
    print(head)
    print("|" + "---|" * 9)
    for name, f in table.items():
        s = SYSTEMS[name]
        print(
            f"| {name} | {s['ack']} | {s['pool']} | {s['results']} | {f['enqueue']:,.0f} | "
            f"{f['drain']:,.0f} | {f['steady']:,.0f} | {f['p50']:.2f} | {f['p99']:.2f} |"
        )
    print(
        f"\nbare redis-py LPUSH of a 300-byte body, one call per message (the floor for one "
        f"round trip per call on this machine): {args.floor:,.0f}/s"
    )
    if "polyq" in table:
        print(f"polyq enqueue / bare LPUSH: x{table['polyq']['enqueue'] / args.floor:.2f}")
        print()
        for name, f in table.items():
            if name != "polyq":
                p = table["polyq"]
                print(
                    f"polyq / {name}: enqueue x{p['enqueue'] / f['enqueue']:.2f}, drain "
                    f"x{p['drain'] / f['drain']:.2f}, RT p50 x{f['p50'] / p['p50']:.2f} faster"
                )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("enqueue", "roundtrip", "bare"):
        phase, system, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
        if phase == "bare":
            result = bare(count)
        else:
            result = enqueue(system, count) if phase == "enqueue" else roundtrip(system, count)
        print(json.dumps(result))
    else:
        main()
