"""Two ``polyq beat`` processes against one broker: one send per due time.

Each beat runs in its own temporary working directory (no shared local file or
lock can help), with a 1-second entry and a 1-second lease. The scenario, on
SQLite, Redis, PostgreSQL and RabbitMQ (with a Redis backend):

1. both start; one leads and sends;
2. the leader is SIGSTOPped past its lease: the other takes over;
3. the stale leader is SIGCONTed: it sends nothing while the other leads;
4. the new leader is SIGKILLed: the old one takes over within the lease time;
5. every message in the queue has a distinct (entry, scheduled time).

Then ``polyq worker -B`` runs the beat embedded in a worker.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from polyq import Polyq
from polyq.beat import Beat
from polyq.testing import services

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LEASE = 1.0

APP_MODULE = textwrap.dedent(
    """
    import os

    from polyq import Polyq

    app = Polyq("beatmod", broker=os.environ["BT_BROKER"], backend=os.environ["BT_BACKEND"])
    app.conf.beat_schedule = {
        "tick": {
            "task": "beatmod.tick",
            "schedule": 1.0,
            "options": {"queue": os.environ["BT_QUEUE"]},
        }
    }
    app.conf.beat_lease_time = float(os.environ["BT_LEASE"])
    app.conf.beat_key_prefix = os.environ["BT_PREFIX"]


    @app.task
    def tick():
        with open(os.environ["BT_OUT"], "a") as out:
            out.write(f"{os.getpid()}\\n")
    """
)


class Scenario:
    def __init__(self, tmp_path: Path, broker: str, backend: str) -> None:
        self.tmp = tmp_path
        self.broker = broker
        self.backend = backend
        tag = uuid.uuid4().hex[:10]
        self.queue = f"beat-{tag}"
        self.prefix = f"beattest-{tag}-"
        code = tmp_path / "code"
        code.mkdir()
        (code / "beatmod.py").write_text(APP_MODULE)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
            "BT_BROKER": broker,
            "BT_BACKEND": backend,
            "BT_QUEUE": self.queue,
            "BT_PREFIX": self.prefix,
            "BT_LEASE": str(LEASE),
            "BT_OUT": str(tmp_path / "ran.txt"),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = Polyq("beatmod-test", broker=broker, backend=backend)
        self.app.conf.beat_schedule = {"tick": {"task": "beatmod.tick", "schedule": 1.0}}
        self.app.conf.beat_lease_time = LEASE
        self.app.conf.beat_key_prefix = self.prefix
        self.probe = Beat(self.app)

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        cwd = self.tmp / name
        cwd.mkdir()
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "polyq", "-A", "beatmod", *args],
            cwd=cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def leader_pid(self) -> int | None:
        leader = self.probe.leader()
        return int(leader.rsplit(":", 1)[1]) if leader else None

    def wait_leader(self, among: set[int], timeout: float) -> tuple[int, float]:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            pid = self.leader_pid()
            if pid in among:
                return pid, time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"no leader among {among} after {timeout}s; {self.logs()}")

    def sent(self) -> list[tuple[float, int]]:
        """(scheduled time, sender pid) of every message in the queue."""
        out = []
        transport = self.app.transport
        while True:
            got = transport.receive([self.queue], 100, 0.5)
            if not got:
                return out
            for d in got:
                scheduled = datetime.datetime.fromisoformat(d.headers["beat-scheduled"])
                out.append((scheduled.timestamp(), int(d.headers["beat-sender"].rsplit(":")[1])))
            transport.ack(got)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                proc.wait(10)
        with contextlib.suppress(Exception):
            self.app.transport.purge(self.queue)
        with contextlib.suppress(Exception):
            self.app.backend.delete(self.app.backend.keys(self.prefix, 100000))
        if "table_prefix=" in self.broker:
            for part in (self.app.transport, self.app.backend):
                drop = getattr(part, "drop_schema", None)
                if drop is not None:
                    with contextlib.suppress(Exception):
                        drop()
        self.app.close()


def _sqlite(tmp_path: Path) -> tuple[str, str]:
    url = services.sqlite_url(tmp_path)
    return url, url


def _redis(tmp_path: Path) -> tuple[str, str]:
    url = services.redis_url()
    return url, url


def _postgres(tmp_path: Path) -> tuple[str, str]:
    # Tables of its own on the shared server (dropped by Scenario.close).
    url = f"{services.postgres_url()}?table_prefix=bt{uuid.uuid4().hex[:8]}_"
    return url, url


def _rabbitmq(tmp_path: Path) -> tuple[str, str]:
    return services.amqp_url(), services.redis_url()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "urls",
    [_sqlite, _redis, _postgres, _rabbitmq],
    # tests/conftest.py marks each case with the brokers its id names.
    ids=["sqlite", "redis", "postgres", "rabbitmq-redis"],
)
def test_two_beats_send_each_run_once(tmp_path, urls):
    broker, backend = urls(tmp_path)
    sc = Scenario(tmp_path, broker, backend)
    try:
        a = sc.start("beat", "-l", "INFO", name="a")
        b = sc.start("beat", "-l", "INFO", name="b")
        pids = {a.pid, b.pid}
        first, _ = sc.wait_leader(pids, 15.0)
        while sc.app.transport.size(sc.queue) < 1:  # the leader sends
            time.sleep(0.05)
            assert a.poll() is None and b.poll() is None, sc.logs()
        stale = a if first == a.pid else b
        other = b if stale is a else a

        # 2. SIGSTOP the leader past its lease: the other takes over.
        stale.send_signal(signal.SIGSTOP)
        t_stop = time.time()
        sc.wait_leader({other.pid}, 2 * LEASE + 2.0)
        # It held at most the current slot and the next: past both, its lease is over.
        time.sleep(max(0.0, t_stop + 2 * LEASE + 0.3 - time.time()))

        # 3. SIGCONT: the stale leader finds it lost the lease and sends nothing.
        stale.send_signal(signal.SIGCONT)
        time.sleep(1.2)
        assert sc.leader_pid() == other.pid

        # 4. SIGKILL the leader: the stale one takes over within the lease time.
        t_kill = time.time()
        other.send_signal(signal.SIGKILL)
        other.wait(5)
        _, takeover = sc.wait_leader({stale.pid}, 2 * LEASE + 2.0)
        time.sleep(1.0)
        stale.send_signal(signal.SIGTERM)
        assert stale.wait(10) == 0, sc.logs()

        sent = sc.sent()
        times = [t for t, _ in sent]
        dupes = sorted({t for t in times if times.count(t) > 1})
        assert not dupes, f"sent twice: {dupes}\n{sc.logs()}"
        by_stale_while_stale = [t for t, pid in sent if pid == stale.pid and t_stop < t < t_kill]
        assert not by_stale_while_stale, f"the stale leader sent {by_stale_while_stale}"
        assert any(pid == other.pid for _, pid in sent), "the other beat never took over"
        assert any(pid == stale.pid and t > t_kill for t, pid in sent), "no take-over after kill"
        print(f"take-over after SIGKILL: {takeover:.2f}s; {len(times)} runs sent")
        assert takeover <= 2 * LEASE + 1.0
        span = round(max(times) - min(times)) + 1
        # Runs missed only around the take-overs (a lease each, at most).
        assert len(times) >= span - 2 * (2 * LEASE + 1), (sorted(times), span)
    finally:
        sc.close()


@pytest.mark.timeout(60)
def test_worker_with_embedded_beat_and_list(tmp_path):
    broker, backend = _sqlite(tmp_path)
    sc = Scenario(tmp_path, broker, backend)
    try:
        worker = sc.start("worker", "-B", "-P", "threads", "-c", "1", "-Q", sc.queue, name="w")
        out = tmp_path / "ran.txt"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().split()) >= 2:
                break
            assert worker.poll() is None, sc.logs()
            time.sleep(0.1)
        else:
            raise AssertionError(f"tasks did not run\n{sc.logs()}")
        assert set(out.read_text().split()) == {str(worker.pid)}
        listing = subprocess.run(
            [sys.executable, "-m", "polyq", "-A", "beatmod", "beat", "--list"],
            cwd=tmp_path,
            env=sc.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listing.returncode == 0, listing.stderr
        assert f":{worker.pid}" in listing.stdout  # the leader, and who sent the last run
        assert "tick  ->  beatmod.tick  [every 1s]" in listing.stdout
        assert "next run:" in listing.stdout
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, sc.logs()
        assert "stopped" in (tmp_path / "w.log").read_text()
    finally:
        sc.close()
