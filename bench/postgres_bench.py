"""polyq on PostgreSQL: big backlog, latency, idle cost; Celery on kombu's SQLAlchemy beside.

One run against the shared PostgreSQL (127.0.0.1:5432, user postgres, database ``test``
unless ``--database`` names another), about 4 minutes::

    python bench/postgres_bench.py [--backlog 1000000] [--window 20000] [--small 1000]

polyq (this interpreter; ``postgresql://...?table_prefix=pgbench_<random>_``, tables
dropped at the end). Worker: ``python -m polyq -A pgbq worker -c 2 -l WARNING``: prefork,
late ack with leases, LISTEN/NOTIFY wake-up (all defaults). Every task is
``ignore_result``, so the result backend (a SQLite file) is never written. Each no-op
appends 8 bytes to a file (``O_APPEND``): completions are counted from its size.

1. **drain, small backlog**: with the worker up and idle, ``--small`` messages are
   published in one transaction; time from the commit to the last completion (median
   of 3 runs).
2. **latency**: ``--latency-calls`` sequential calls, 5-50 ms random gaps, to an idle
   worker; the task records ``time.time()`` at its start, compared with the time taken
   just before ``.delay()`` → p50/p99 (first 10 calls dropped).
3. **idle cost**: ``xact_commit + xact_rollback`` of the database in
   ``pg_stat_database``, read ``--idle-seconds`` apart with no polyq worker running,
   then with only the idle worker (after 3 s idle); the difference is the worker's
   transactions per second (each autocommit read is one). Caveats: the counter covers
   every client of the database (another test run in it adds noise to either window,
   so both raw figures are printed; a database of its own avoids that) and backends
   flush it at most once a second.
4. **drain, big backlog**: worker stopped; ``--backlog`` messages published in batches of
   10,000 (``polyq.message.encode``, one ``transport.publish`` per batch); ``ANALYZE``
   of the table, timed (in production autovacuum gives the planner statistics; this
   server runs with ``autovacuum = off``, and a plan chosen without statistics is not
   the one production runs); ``pg_stat_user_tables`` read; worker started; rate over
   the next ``--window`` completions counted from the first one (boot excluded, warm-up
   not), or over what ``--window-seconds`` allowed; worker stopped; table statistics;
   then the same once more, now with the dead tuples the first window left (no
   ``VACUUM`` in between); the index scans of each window (``pg_stat_user_indexes``)
   show which indexes the claims read; table statistics again; ``VACUUM`` timed. Before,
   between and after the two windows, the drain of step 1 runs again (3 runs, a worker
   of its own) on tables of their own (``<prefix>s_``): each window's rate is also given
   as a ratio to the mean of the drains just before and after it, which cancels most of
   the drift in the machine's load (other processes on a shared machine) over the run.

Celery 5.7 (only in ``/tmp/benchvenv``, never a polyq dependency; this script re-runs
itself there with ``--celery-part``): broker ``sqla+postgresql+psycopg://`` (kombu's
SQLAlchemy transport: per message one ``SELECT ... FOR UPDATE LIMIT 1`` and an ``UPDATE``
marking it invisible, so the ack is early, on fetch; a 1 s poll when the queue is empty),
result backend ``db+postgresql+psycopg://`` (``AsyncResult.get`` polls it every 0.5 s),
worker ``celery -A cbq worker -c 2 -l WARNING`` (prefork, its defaults). Its tables and
sequences live in a private schema (kombu and Celery name their sequences
``message_id_sequence``, ``task_id_sequence``..., which would clash with other users of
``public``), dropped at the end. ``--celery-tasks`` no-ops are enqueued with the worker
stopped, then the worker starts: drain rate from the first completion (and from the
worker's start, boot included); then ``--celery-round-trips`` sequential
``echo(i).get()`` (result stored) → p50.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from typing import Any

PG_DATABASE = "test"  # --database
CELERY_PY = "/tmp/benchvenv/bin/python"
CELERY_BIN = "/tmp/benchvenv/bin/celery"


def _count(path: str, size: int = 8) -> int:
    try:
        return os.path.getsize(path) // size
    except FileNotFoundError:
        return 0


def _wait_count(path: str, n: int, timeout: float = 300, size: int = 8) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(path, size) >= n:
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"{path}: fewer than {n} completions after {timeout} s")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    """Stop a worker this script started (its own session: pgid == pid)."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _noop_body(count_var: str) -> str:
    return textwrap.dedent(
        f"""
        def _append(data):
            fd = os.open(os.environ["{count_var}"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, data)
            os.close(fd)
        """
    )


POLYQ_TASKS = (
    "import os, struct, time\nfrom polyq import Polyq\napp = Polyq('pgbq')\n"
    + _noop_body("BENCH_COUNT_FILE")
    + textwrap.dedent(
        """
        @app.task(ignore_result=True)
        def noop(i):
            _append(b"12345678")

        @app.task(ignore_result=True)
        def stamp(sent):
            started = time.time()
            fd = os.open(os.environ["BENCH_STAMP_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, struct.pack("<dd", sent, started))
            os.close(fd)
        """
    )
)

CELERY_TASKS = (
    "import os\nfrom celery import Celery\n"
    + _noop_body("BENCH_COUNT_FILE")
    + textwrap.dedent(
        """
        app = Celery("cbq", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])
        _connect = {"options": "-csearch_path=" + os.environ["BENCH_SCHEMA"]}
        app.conf.broker_transport_options = {"connect_args": _connect}
        app.conf.database_engine_options = {"connect_args": _connect}
        app.conf.broker_connection_retry_on_startup = True

        @app.task(ignore_result=True)
        def noop(i):
            _append(b"12345678")

        @app.task
        def echo(i):
            return i
        """
    )
)


# -- PostgreSQL statistics ----------------------------------------------------------------


def _pg() -> Any:
    import psycopg

    return psycopg.connect(
        f"host=127.0.0.1 port=5432 user=postgres dbname={PG_DATABASE}", autocommit=True
    )


def _pg_url(driver: str = "postgresql") -> str:
    return f"{driver}://postgres@127.0.0.1:5432/{PG_DATABASE}"


def _xacts() -> int:
    with _pg() as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (PG_DATABASE,),
        ).fetchone()
    return int(row[0])


def _table_stats(table: str) -> dict[str, int]:
    with _pg() as conn:
        row = conn.execute(
            "SELECT n_live_tup, n_dead_tup, autovacuum_count, vacuum_count, "
            "pg_total_relation_size(relid) FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        ).fetchone()
    keys = ("live", "dead", "autovacuums", "vacuums", "bytes")
    return dict(zip(keys, map(int, row), strict=True))


def _fmt_stats(s: dict[str, int]) -> str:
    return (
        f"live {s['live']:,}, dead {s['dead']:,}, autovacuums {s['autovacuums']}, "
        f"vacuums {s['vacuums']}, size {s['bytes'] / 2**20:,.0f} MiB"
    )


# -- polyq ------------------------------------------------------------------------------


def bench_polyq(workdir: str, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    from polyq.message import TaskMessage, encode
    from polyq.registry import create_transport

    url = f"{_pg_url()}?table_prefix={prefix}"
    count = os.path.join(workdir, "polyq.count")
    stamps = os.path.join(workdir, "polyq.stamps")
    with open(os.path.join(workdir, "pgbq.py"), "w") as f:
        f.write(POLYQ_TASKS)
    # Every task ignores its result: the backend (a SQLite file here) is never written.
    backend = f"sqlite:///{os.path.join(workdir, 'results.sqlite3')}"
    env = {
        **os.environ,
        "POLYQ_BROKER_URL": url,
        "POLYQ_RESULT_BACKEND": backend,
        "BENCH_COUNT_FILE": count,
        "BENCH_STAMP_FILE": stamps,
    }
    os.environ.update(env)
    sys.path.insert(0, workdir)
    import pgbq  # type: ignore[import-not-found]

    out: dict[str, Any] = {"url": url}
    app = pgbq.app
    app.transport.create_schema()
    table = f"{prefix}messages"

    def batch(n: int) -> list[Any]:
        return [
            encode(TaskMessage(task=pgbq.noop.name, args=[i], ignore_result=True)) for i in range(n)
        ]

    def start_worker(broker: str = url) -> subprocess.Popen[bytes]:
        log = open(os.path.join(workdir, "worker.log"), "ab")
        return subprocess.Popen(
            [sys.executable, "-m", "polyq", "-A", "pgbq", "worker", "-c", "2", "-l", "WARNING"],
            cwd=workdir,
            env={**env, "POLYQ_BROKER_URL": broker},
            start_new_session=True,
            stdout=log,
            stderr=log,
        )

    def small_rates(publish: Any) -> list[float]:
        """Drain rates of ``args.small`` messages published in one commit to the warm
        idle worker (3 runs)."""
        rates = []
        for _ in range(3):
            done = _count(count)
            messages = batch(args.small)
            publish(messages)
            t0 = time.perf_counter()
            rates.append(args.small / (_wait_count(count, done + args.small) - t0))
            time.sleep(0.5)
        return rates

    small_url = f"{_pg_url()}?table_prefix={prefix}s_"
    small_transport = create_transport(small_url)

    def bracket() -> list[float]:
        """The small drain again, on tables of their own (``<prefix>s_``) beside the
        big backlog: the figure of the moment on a machine whose load drifts."""
        proc = start_worker(small_url)
        try:
            done = _count(count)
            small_transport.publish(batch(50))  # boot and warm-up
            _wait_count(count, done + 50, timeout=60)
            return small_rates(small_transport.publish)
        finally:
            _stop(proc)

    # Idle baseline of the database before any polyq worker exists.
    before, t0 = _xacts(), time.perf_counter()
    time.sleep(args.idle_seconds)
    out["xacts_baseline"] = (_xacts() - before) / (time.perf_counter() - t0)

    proc = start_worker()
    try:
        app.publish_raw(batch(50))  # boot and warm-up
        _wait_count(count, 50, timeout=60)
        # 1. small backlog, warm idle worker, one commit makes them all visible at once
        out["small_rates"] = small_rates(app.publish_raw)
        # 2. publish → start latency on an idle worker
        lat = []
        for i in range(args.latency_calls + 10):
            time.sleep(random.uniform(0.005, 0.05))
            pgbq.stamp.delay(time.time())
            _wait_count(stamps, i + 1, timeout=30, size=16)
            with open(stamps, "rb") as f:
                f.seek(16 * i)
                sent, started = struct.unpack("<dd", f.read(16))
            if i >= 10:  # the first calls warm the worker's code paths up
                lat.append(started - sent)
        out["latency"] = lat
        # 3. idle worker's transactions per second
        time.sleep(3)  # let its poll pause grow to its maximum
        before, t0 = _xacts(), time.perf_counter()
        time.sleep(args.idle_seconds)
        out["xacts_idle"] = (_xacts() - before) / (time.perf_counter() - t0)
    finally:
        _stop(proc)

    # 4. big backlog, published with the worker stopped
    publisher = create_transport(url)
    t0 = time.perf_counter()
    for start in range(0, args.backlog, 10_000):
        publisher.publish(batch(min(10_000, args.backlog - start)))
    out["publish_rate"] = args.backlog / (time.perf_counter() - t0)
    publisher.close()  # its backend exits and flushes its statistics
    time.sleep(1.5)
    # Planner statistics first, as autovacuum would give them in production (this
    # server runs with autovacuum off, so nothing else would ever ANALYZE the table).
    with _pg() as conn:
        t0 = time.perf_counter()
        conn.execute(f'ANALYZE "{table}"')
        out["analyze_s"] = time.perf_counter() - t0
    out["stats_before"] = _table_stats(table)
    out["brackets"] = [bracket()]
    out["big"] = _big_window(start_worker, count, table, args)
    out["stats_mid"] = _table_stats(table)
    out["brackets"].append(bracket())
    # Once more, now over the dead tuples the first window left (no VACUUM between).
    out["big_next"] = _big_window(start_worker, count, table, args)
    out["stats_after"] = _table_stats(table)
    out["brackets"].append(bracket())
    small_transport.close()
    with _pg() as conn:
        t0 = time.perf_counter()
        conn.execute(f'VACUUM "{table}"')
        out["vacuum_s"] = time.perf_counter() - t0
    time.sleep(0.5)
    out["stats_vacuumed"] = _table_stats(table)
    return out


def _index_scans(table: str) -> dict[str, int]:
    with _pg() as conn:
        rows = conn.execute(
            "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE relname = %s",
            (table,),
        ).fetchall()
    return {name[len(table) + 1 :]: int(n) for name, n in rows}


def _big_window(
    start_worker: Any, count: str, table: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Start a worker on the waiting backlog; the rate over the next ``args.window``
    completions from the first one (or what ``args.window_seconds`` allowed); the
    index scans of the messages table meanwhile (the worker stopped, so flushed)."""
    scans = _index_scans(table)
    done = _count(count)
    proc = start_worker()
    try:
        t_start = time.perf_counter()
        t_first = _wait_count(count, done + 1, timeout=60)
        deadline = t_first + args.window_seconds
        while _count(count) < done + 1 + args.window and time.perf_counter() < deadline:
            time.sleep(0.002)
        t_end = time.perf_counter()
        completed = _count(count) - done - 1
    finally:
        _stop(proc)
    time.sleep(1.5)  # the worker's backends exited; their statistics are flushed
    after = _index_scans(table)
    return {
        "rate": completed / (t_end - t_first),
        "completed": completed,
        "boot": t_first - t_start,
        "scans": {k: after[k] - scans.get(k, 0) for k in after},
    }


def drop_polyq(prefix: str) -> None:
    from polyq.registry import create_transport

    transport = create_transport(f"{_pg_url()}?table_prefix={prefix}")
    transport.drop_schema()
    with transport.engine.begin() as conn:  # meta goes once no result tables use it
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{prefix}meta"')
    transport.close()


# -- Celery (runs under /tmp/benchvenv/bin/python) ----------------------------------------


def celery_part(cfg: dict[str, Any]) -> dict[str, Any]:
    global PG_DATABASE
    workdir, schema, PG_DATABASE = cfg["workdir"], cfg["schema"], cfg["database"]
    count = os.path.join(workdir, "celery.count")
    with open(os.path.join(workdir, "cbq.py"), "w") as f:
        f.write(CELERY_TASKS)
    base = _pg_url("postgresql+psycopg")
    env = {
        **os.environ,
        "BENCH_BROKER": f"sqla+{base}",
        "BENCH_BACKEND": f"db+{base}",
        "BENCH_SCHEMA": schema,
        "BENCH_COUNT_FILE": count,
    }
    os.environ.update(env)
    sys.path.insert(0, workdir)
    import cbq  # type: ignore[import-not-found]

    out: dict[str, Any] = {}
    n = cfg["tasks"]
    t0 = time.perf_counter()
    for i in range(n):
        cbq.noop.delay(i)
    out["enqueue_rate"] = n / (time.perf_counter() - t0)
    log = open(os.path.join(workdir, "celery.log"), "ab")
    proc = subprocess.Popen(
        [CELERY_BIN, "-A", "cbq", "worker", "-c", "2", "-l", "WARNING"],
        cwd=workdir,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=log,
    )
    try:
        t_start = time.perf_counter()
        t_first = _wait_count(count, 1, timeout=60)
        t_end = _wait_count(count, n, timeout=120)
        out["drain_boot"] = n / (t_end - t_start)
        out["drain"] = (n - 1) / (t_end - t_first)
        for i in range(2):
            cbq.echo.delay(i).get(timeout=30)
        rts = []
        for i in range(cfg["round_trips"]):
            t0 = time.perf_counter()
            assert cbq.echo.delay(i).get(timeout=30) == i
            rts.append(time.perf_counter() - t0)
        out["rt"] = rts
    finally:
        _stop(proc, signal.SIGTERM)
    return out


def run_celery(workdir: str, schema: str, args: argparse.Namespace) -> dict[str, Any]:
    if not os.path.exists(CELERY_PY):
        return {"error": f"{CELERY_PY} not found (Celery 5.7 is installed only there)"}
    cfg = {
        "workdir": workdir,
        "schema": schema,
        "tasks": args.celery_tasks,
        "round_trips": args.celery_round_trips,
        "database": PG_DATABASE,
    }
    proc = subprocess.run(
        [CELERY_PY, os.path.abspath(__file__), "--celery-part", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


# -- report -------------------------------------------------------------------------------


def report(args: argparse.Namespace, p: dict[str, Any], c: dict[str, Any], base: str) -> None:
    small = statistics.median(p["small_rates"])
    big, nxt = p["big"], p["big_next"]
    lat = [x * 1000 for x in p["latency"]]
    celery_ok = "error" not in c
    print(f"\nPostgreSQL 127.0.0.1:5432 db {PG_DATABASE}, 2 worker processes, files in {base}")
    print(
        "polyq : prefork -c 2 (defaults), late ack with leases, LISTEN/NOTIFY wake-up, "
        "results ignored (ignore_result)"
    )
    print(
        "celery: prefork -c 2 (defaults), kombu SQLAlchemy transport (ack on fetch, 1 s poll "
        "when empty), no-op ignore_result, echo stored in db+postgresql+psycopg"
    )
    row = "{:62} {:>11} {:>11}"
    print("\n" + row.format("measure", "polyq", "celery"))
    print(
        row.format(
            f"drain/s, {args.small:,} waiting (median of 3)",
            f"{small:,.0f}",
            f"{c['drain']:,.0f}" if celery_ok else "n/a",
        )
    )
    brackets = [statistics.median(b) for b in p["brackets"]]
    windows = ((", after ANALYZE", big), (", the next, no VACUUM", nxt))
    for i, (label, r) in enumerate(windows):
        print(
            row.format(
                f"drain/s, {r['completed']:,} of {args.backlog:,} waiting{label}",
                f"{r['rate']:,.0f}",
                "-",
            )
        )
        print(
            row.format(
                f"  ratio to the {args.small:,}-waiting drain", f"{r['rate'] / small:.2f}", "-"
            )
        )
        around = (brackets[i] + brackets[i + 1]) / 2
        print(
            row.format(
                "  ratio to the drains just before and after", f"{r['rate'] / around:.2f}", "-"
            )
        )
    print(
        row.format(
            "publish -> task start p50 ms (idle worker)", f"{statistics.median(lat):.2f}", "-"
        )
    )
    print(
        row.format(
            "publish -> task start p99 ms (idle worker)", f"{_percentile(lat, 0.99):.2f}", "-"
        )
    )
    if celery_ok:
        rt = [x * 1000 for x in c["rt"]]
        print(
            row.format(
                f"round trip p50 ms ({len(rt)} calls, result stored)",
                "-",
                f"{statistics.median(rt):,.1f}",
            )
        )
    idle = p["xacts_idle"] - p["xacts_baseline"]
    print(row.format("idle worker transactions/s (xact delta, see method)", f"{idle:.1f}", "-"))
    print(
        f"\npolyq 1,000-waiting runs: {', '.join(f'{r:,.0f}' for r in p['small_rates'])}/s; "
        f"backlog published at {p['publish_rate']:,.0f} msg/s (batches of 10,000)"
    )
    print(
        f"{args.small:,}-waiting drains on tables of their own, before, between and after "
        "the two windows (median of 3 each): " + ", ".join(f"{b:,.0f}" for b in brackets) + "/s"
    )
    for label, r in (("after ANALYZE", big), ("next window", nxt)):
        scans = ", ".join(f"{k} {v:,}" for k, v in sorted(r["scans"].items()))
        print(
            f"big backlog {label}: {r['completed']:,} completions in "
            f"{r['completed'] / r['rate']:.1f} s (worker boot {r['boot']:.1f} s); "
            f"index scans: {scans}"
        )
    print(f"ANALYZE took {p['analyze_s']:.2f} s")
    print(f"latency: {len(lat)} calls, min {min(lat):.2f} ms, max {max(lat):.2f} ms")
    print(
        f"idle: database {PG_DATABASE!r} {p['xacts_baseline']:.1f} xact/s with no polyq worker, "
        f"{p['xacts_idle']:.1f} with the idle worker ({args.idle_seconds:.0f} s each; the "
        "counter covers every client of that database)"
    )
    print(f"messages table before the drains:       {_fmt_stats(p['stats_before'])}")
    print(f"messages table after the first drain:   {_fmt_stats(p['stats_mid'])}")
    print(f"messages table after the second drain:  {_fmt_stats(p['stats_after'])}")
    print(f"VACUUM took {p['vacuum_s']:.2f} s; after it:   {_fmt_stats(p['stats_vacuumed'])}")
    if celery_ok:
        print(
            f"celery: enqueue {c['enqueue_rate']:,.0f}/s (one call each, worker stopped), "
            f"drain from worker start (boot included) {c['drain_boot']:,.0f}/s"
        )
    else:
        print(f"celery on kombu's SQLAlchemy transport did not run: {c['error']}")


def main() -> None:
    global PG_DATABASE
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--window-seconds", type=float, default=25.0)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--celery-tasks", type=int, default=1_000)
    parser.add_argument("--celery-round-trips", type=int, default=20)
    parser.add_argument(
        "--database", default=PG_DATABASE, help="database on 127.0.0.1:5432 (default test)"
    )
    parser.add_argument("--celery-part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    PG_DATABASE = args.database
    if args.celery_part:
        try:
            result = celery_part(json.loads(args.celery_part))
        except Exception as exc:  # reported in the table, not a traceback
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print("RESULT " + json.dumps(result))
        return

    tag = uuid.uuid4().hex[:8]
    prefix = f"pgbench_{tag}_"
    schema = f"pgbench_celery_{tag}"
    base = tempfile.mkdtemp(prefix="polyq-pgbench-", dir=os.environ.get("BENCH_DIR"))
    for sub in ("polyq", "celery"):
        os.makedirs(os.path.join(base, sub))
    started = time.perf_counter()
    with _pg() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        p = bench_polyq(os.path.join(base, "polyq"), prefix, args)
        c = run_celery(os.path.join(base, "celery"), schema, args)
    finally:
        drop_polyq(prefix)
        drop_polyq(f"{prefix}s_")
        with _pg() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    report(args, p, c, base)
    print(
        f"whole run {time.perf_counter() - started:.0f} s; tables {prefix}* and schema "
        f"{schema} dropped"
    )


if __name__ == "__main__":
    main()
