"""polyq on RabbitMQ beside Celery, Dramatiq and bare pika on the same RabbitMQ, in one run.

Infrastructure, all private and on free loopback ports, stopped at the end: one
RabbitMQ node (own node name, epmd, data dir; no plugins) with a fresh vhost per
system and run, and one ``redis-server`` (no persistence) for results and for the
completion counter.

For every system:

1. **enqueue**: a fresh process sends N no-op tasks, one API call per task, with no
   worker running → tasks/s. polyq also times **enqueue-batch**: the same N
   messages encoded by polyq and published 1,000 per ``publish`` call (persistent,
   confirms awaited together); bare pika times its unconfirmed publish.
2. **drain**: the system's worker starts with 2 processes (bare pika: one consumer
   process, prefetch 100); every no-op does one Redis ``INCR`` (db 2), polled every
   5 ms until it reaches N → tasks/s from the worker's start (boot included) and
   "steady" (from the first completion);
3. **round trip**: with the worker up, K sequential ``echo(i)`` calls each wait for
   the result (first 20 dropped) → p50/p99 ms;
4. the worker's process group gets SIGTERM (SIGKILL after 15 s).

It also prints the CPU time per drained task of the worker (all its processes, its
start-up included) and of the RabbitMQ node, read from ``/proc``.

Peers come from a separate virtualenv, never polyq's dependencies::

    python -m venv --system-site-packages /tmp/benchvenv
    /tmp/benchvenv/bin/pip install "celery==5.7.0" "dramatiq[rabbitmq]==2.2.1" redis
    /tmp/benchvenv/bin/python bench/rabbitmq_peers.py --n 20000 --k 500

This module is also the task module of every worker (``polyq -A
bench.rabbitmq_peers:polyq_app``, ``celery -A bench.rabbitmq_peers:celery_app``,
``dramatiq bench.rabbitmq_peers:dramatiq_broker``), configured by ``BENCH_AMQP`` and
``BENCH_REDIS``.
"""

from __future__ import annotations

import argparse
import contextlib
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
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COUNTER = "bench:done"
QUEUE = "celery"

SYSTEMS: dict[str, dict[str, str]] = {
    "polyq": {
        "worker": "polyq -A bench.rabbitmq_peers:polyq_app worker -c 2 -l WARNING",
        "ack": "late, after the task (polyq's default)",
        "pool": "prefork -c 2 (defaults)",
        "publish": "persistent, confirmed",
        "results": "no-op: ignore_result; echo: Redis",
    },
    "celery": {
        "worker": "celery -A bench.rabbitmq_peers:celery_app worker -P prefork -c 2 -l WARNING",
        "ack": "early (Celery's default)",
        "pool": "prefork -c 2 (defaults: prefetch x4)",
        "publish": "persistent, unconfirmed (default)",
        "results": "no-op: ignore_result; echo: Redis",
    },
    "dramatiq-t1": {
        "worker": "dramatiq bench.rabbitmq_peers:dramatiq_broker -p 2 -t 1",
        "ack": "late (after the actor)",
        "pool": "2 processes x 1 thread",
        "publish": "persistent, unconfirmed (default)",
        "results": "no-op: none; echo: Results middleware, Redis",
    },
    "dramatiq-t8": {
        "worker": "dramatiq bench.rabbitmq_peers:dramatiq_broker -p 2 -t 8",
        "ack": "late (after the actor)",
        "pool": "2 processes x 8 threads (its default)",
        "publish": "persistent, unconfirmed (default)",
        "results": "no-op: none; echo: Results middleware, Redis",
    },
    "pika": {
        "worker": f"{sys.executable} {__file__} pika-worker",
        "ack": "manual, after the work",
        "pool": "1 process, basic_consume prefetch 100",
        "publish": "persistent, unconfirmed",
        "results": "echo: reply_to queue",
    },
}


def _amqp() -> str:
    return os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


def _redis() -> str:
    return os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379").rstrip("/")


_counter: Any = None


def _count() -> None:
    global _counter
    if _counter is None:
        import redis

        _counter = redis.Redis.from_url(f"{_redis()}/2")
    _counter.incr(COUNTER)


# -- the systems' task modules (built on first use) ---------------------------------------

_built: dict[str, Any] = {}


def _polyq() -> Any:
    from polyq.app import Polyq

    app = Polyq("bench", broker=_amqp(), backend=f"{_redis()}/1")

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        _count()

    @app.task(name="bench.echo")
    def echo(i: int) -> int:
        return i

    return {"app": app, "noop": noop, "echo": echo}


def _celery() -> Any:
    from celery import Celery

    app = Celery("bench", broker=_amqp().replace("amqp://", "pyamqp://", 1))
    app.conf.update(
        result_backend=f"{_redis()}/1",
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        _count()

    @app.task(name="bench.echo")
    def echo(i: int) -> int:
        return i

    return {"app": app, "noop": noop, "echo": echo}


def _dramatiq() -> Any:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    results = RedisBackend(url=f"{_redis()}/1")
    broker = RabbitmqBroker(url=_amqp())
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
    family = name.split("-")[0]
    if family not in _built:
        _built[family] = {"polyq": _polyq, "celery": _celery, "dramatiq": _dramatiq}[family]()
    return _built[family]


def __getattr__(name: str) -> Any:
    """The apps the worker CLIs load."""
    if name == "polyq_app":
        return _system("polyq")["app"]
    if name == "celery_app":
        return _system("celery")["app"]
    if name == "dramatiq_broker":
        return _system("dramatiq")["broker"]
    raise AttributeError(name)


# -- bare pika -------------------------------------------------------------------------------


def _pika_params() -> Any:
    import pika

    params = pika.URLParameters(_amqp())
    vhost = _amqp().rsplit("/", 1)[1]
    params.virtual_host = "/" if vhost in ("", "/") else vhost
    return params


def pika_worker() -> None:
    """One consumer: prefetch 100, json.loads + INCR (or a reply) + ack."""
    import pika

    connection = pika.BlockingConnection(_pika_params())
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.basic_qos(prefetch_count=100)

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        task = json.loads(body)
        if props.reply_to:
            ch.basic_publish(
                "",
                props.reply_to,
                json.dumps(task["i"]).encode(),
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
        else:
            _count()
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(QUEUE, on_message)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    channel.start_consuming()


# -- client phases (each in a fresh process) ---------------------------------------------------


def enqueue(system: str, n: int) -> dict[str, float]:
    """``n`` no-ops, one call each; polyq and pika also a batched variant."""
    if system == "pika":
        import pika

        connection = pika.BlockingConnection(_pika_params())
        channel = connection.channel()
        channel.queue_declare(QUEUE, durable=True)
        props = pika.BasicProperties(delivery_mode=2)
        body = json.dumps({"task": "noop", "args": []}).encode()
        channel.basic_publish("", QUEUE, body, props)
        start = time.perf_counter()
        for _ in range(n - 1):
            channel.basic_publish("", QUEUE, body, props)
        rate = (n - 1) / (time.perf_counter() - start)
        connection.close()
        return {"enqueue": rate, "enqueue_batch": rate}
    tasks = _system(system)
    send = tasks["noop"].send if system.startswith("dramatiq") else tasks["noop"].delay
    send()  # connect and warm up outside the timing
    start = time.perf_counter()
    for _ in range(n - 1):
        send()
    figures = {"enqueue": (n - 1) / (time.perf_counter() - start)}
    if system == "polyq":
        figures["enqueue_batch"] = _polyq_batch(tasks["app"], n)
    return figures


def _polyq_batch(app: Any, n: int) -> float:
    """Encode ``n`` no-ops as ``.delay()`` does and publish 1,000 per call, confirmed;
    the queue then holds 2n tasks, all drained by the worker."""
    from polyq.message import TaskMessage, encode

    messages = [encode(TaskMessage(task="bench.noop", ignore_result=True)) for _ in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 1000):
        app.publish_raw(messages[i : i + 1000])
    return n / (time.perf_counter() - start)


def roundtrip(system: str, k: int, warmup: int = 20) -> dict[str, float]:
    """``k`` sequential echo calls, each waiting for its result."""
    samples = []
    if system == "pika":
        samples = _pika_roundtrips(k + warmup)
    else:
        tasks = _system(system)
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


def _pika_roundtrips(count: int) -> list[float]:
    import pika

    connection = pika.BlockingConnection(_pika_params())
    channel = connection.channel()
    reply = channel.queue_declare("", exclusive=True).method.queue
    answers: list[bytes] = []
    channel.basic_consume(reply, lambda ch, m, p, body: answers.append(body), auto_ack=True)
    samples = []
    for i in range(count):
        answers.clear()
        start = time.perf_counter()
        props = pika.BasicProperties(reply_to=reply, correlation_id=str(i))
        channel.basic_publish("", QUEUE, json.dumps({"task": "echo", "i": i}).encode(), props)
        while not answers:
            connection.process_data_events(time_limit=None)
        samples.append(time.perf_counter() - start)
        assert json.loads(answers[0]) == i
    connection.close()
    return samples


# -- private servers --------------------------------------------------------------------------


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every process below it, from /proc
    (0.0 where /proc is missing); exited descendants are not counted."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
                todo.extend(int(child) for child in children.split())
        except (OSError, IndexError, ValueError):
            continue
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rabbit:
    """A private RabbitMQ node in ``base``; every process is ended by its group."""

    def __init__(self, base: Path) -> None:
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(server):
            server = shutil.which("rabbitmq-server") or sys.exit("rabbitmq-server not found")
        ctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
        self.ctl = ctl if os.path.exists(ctl) else (shutil.which("rabbitmqctl") or "rabbitmqctl")
        self.port = _free_port()
        self.node = f"polyqbench-{uuid.uuid4().hex[:6]}@localhost"
        epmd_port = _free_port()
        (base / "plugins").write_text("[].\n")
        self.env = dict(
            os.environ,
            HOME=str(base),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(_free_port()),
            ERL_EPMD_PORT=str(epmd_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
        )
        self.epmd = subprocess.Popen(
            [shutil.which("epmd") or "epmd", "-port", str(epmd_port)],
            env=self.env,
            start_new_session=True,
        )
        self.log = (base / "rabbit.out").open("ab")
        self.proc = subprocess.Popen(
            [server],
            env=self.env,
            cwd=base,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the private RabbitMQ did not start")
            time.sleep(0.2)

    def vhost(self, name: str) -> str:
        for args in (
            ["add_vhost", name],
            ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        ):
            subprocess.run(
                [self.ctl, "-q", "-n", self.node, *args],
                env=self.env,
                check=True,
                capture_output=True,
            )
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        for proc in (self.proc, self.epmd):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self.log.close()


# -- the harness -------------------------------------------------------------------------------


def _env(amqp: str, redis_url: str) -> dict[str, str]:
    env = dict(os.environ, BENCH_AMQP=amqp, BENCH_REDIS=redis_url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _phase(env: dict[str, str], *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"phase {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def run_system(
    name: str, rabbit: Rabbit, redis_url: str, n: int, k: int, log: Path
) -> dict[str, float]:
    import redis

    vhost = f"{name}-{uuid.uuid4().hex[:6]}"
    env = _env(rabbit.vhost(vhost), redis_url)
    admin = redis.Redis.from_url(redis_url)
    admin.flushall()  # our private server only
    figures = _phase(env, "enqueue", name, str(n))
    total = n * 2 if name == "polyq" else n  # the batch phase queued n more
    counter = redis.Redis.from_url(f"{redis_url}/2")
    with log.open("ab") as sink:
        start = time.perf_counter()
        worker = subprocess.Popen(
            SYSTEMS[name]["worker"].split(),
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
        broker_cpu = _tree_cpu(rabbit.proc.pid)
        try:
            first_at, first_count, done = None, 0, 0
            progress_at, last = start, 0
            while done < total:
                done = int(counter.get(COUNTER) or 0)
                now = time.perf_counter()
                if first_at is None and done > 0:
                    first_at, first_count = now, done
                if done != last:
                    progress_at, last = now, done
                if worker.poll() is not None:
                    raise RuntimeError(f"{name} worker exited early:\n{_tail(log)}")
                if now - progress_at > 60:
                    raise RuntimeError(f"{name} stalled at {done}/{total} for 60 s:\n{_tail(log)}")
                time.sleep(0.005)
            end = time.perf_counter()
            # CPU per task while draining, the worker's start-up included.
            figures["cpu_worker_us"] = _tree_cpu(worker.pid) / total * 1e6
            figures["cpu_broker_us"] = (_tree_cpu(rabbit.proc.pid) - broker_cpu) / total * 1e6
            figures["drain"] = total / (end - start)
            assert first_at is not None
            figures["steady"] = (total - first_count) / max(end - first_at, 1e-9)
            figures.update(_phase(env, "roundtrip", name, str(k)))
        finally:
            _stop(worker)
            counter.close()
            admin.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="no-op tasks to enqueue and drain")
    parser.add_argument("--k", type=int, default=500, help="round trips to time")
    parser.add_argument("--repeat", type=int, default=1, help="runs per system (median shown)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    # SIGTERM (e.g. from timeout) unwinds through the finally blocks below, so the
    # private servers and any worker are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="polyq-rbench-") as tmp:
        base = Path(tmp)
        redis_port = _free_port()
        redis_server = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        (base / "rabbit").mkdir()
        rabbit = Rabbit(base / "rabbit")
        try:
            names = args.systems.split(",")
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            # Rounds interleave the systems, so a busy moment of the machine does not
            # land on one system's runs only.
            for _ in range(args.repeat):
                for name in names:
                    figures = run_system(
                        name, rabbit, f"redis://127.0.0.1:{redis_port}", args.n, args.k,
                        base / f"{name}.log",
                    )  # fmt: skip
                    runs[name].append(figures)
                    print(f"{name}: {figures}", file=sys.stderr, flush=True)
            table = {
                name: {key: statistics.median(r[key] for r in done) for key in done[0]}
                for name, done in runs.items()
            }
        finally:
            rabbit.stop()
            redis_server.terminate()
            redis_server.wait(10)
    _print(table, args)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


def _print(table: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\nN={args.n} no-op tasks, K={args.k} round trips, median of {args.repeat} run(s); "
        "one private RabbitMQ node (fresh vhost per run) and one private redis-server\n"
    )
    head = (
        "| system | ack | pool | publish | results | enqueue/s | batch enqueue/s | drain/s "
        "| steady/s | RT p50 ms | RT p99 ms |"
    )
    print(head)
    print("|" + "---|" * 11)
    for name, f in table.items():
        s = SYSTEMS[name]
        batch = f"{f['enqueue_batch']:,.0f}" if "enqueue_batch" in f else "-"
        print(
            f"| {name} | {s['ack']} | {s['pool']} | {s['publish']} | {s['results']} | "
            f"{f['enqueue']:,.0f} | {batch} | {f['drain']:,.0f} | {f['steady']:,.0f} | "
            f"{f['p50']:.2f} | {f['p99']:.2f} |"
        )
    if "polyq" in table:
        p = table["polyq"]
        print()
        for name, f in table.items():
            if name != "polyq":
                print(
                    f"polyq / {name}: drain x{p['drain'] / f['drain']:.2f} (steady "
                    f"x{p['steady'] / f['steady']:.2f}), RT p50 {p['p50']:.2f} vs {f['p50']:.2f} ms"
                )
        if "pika" in table:
            ratio = p["enqueue_batch"] / table["pika"]["enqueue"]
            print(f"polyq confirmed batch enqueue / bare pika unconfirmed publish: x{ratio:.2f}")
    print("\nCPU per task while draining (worker: all its processes, start-up included):")
    for name, f in table.items():
        print(f"  {name}: worker {f['cpu_worker_us']:.0f} us, RabbitMQ {f['cpu_broker_us']:.0f} us")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("enqueue", "roundtrip"):
        phase, system, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
        result = enqueue(system, count) if phase == "enqueue" else roundtrip(system, count)
        print(json.dumps(result))
    elif len(sys.argv) > 1 and sys.argv[1] == "pika-worker":
        pika_worker()
    else:
        main()
