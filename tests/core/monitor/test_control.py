"""``polyq status|inspect|control`` against two live workers, on SQLite and on Redis.

w1: prefork pool, one process, consumes ``celery`` and ``w1q``, prefetches one.
w2: threads pool, two threads, consumes ``celery``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from polyq import states
from polyq.cli import main
from tests.core.monitor import monapp
from tests.core.monitor.support import APP, start_worker, use_broker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOST = socket.gethostname()
W1, W2 = f"w1@{HOST}", f"w2@{HOST}"


@pytest.fixture(scope="module")
def cluster(broker_url: str) -> Iterator[str]:
    use_broker(monapp.app, broker_url)
    w1 = start_worker(
        broker_url,
        "-n",
        "w1@%h",
        "-P",
        "prefork",
        "-c",
        "1",
        "-Q",
        "celery,w1q",
        "--prefetch-multiplier",
        "1",
        "-E",
    )
    try:
        w2 = start_worker(broker_url, "-n", "w2@%h", "-P", "threads", "-c", "2", "-E")
    except BaseException:
        w1.stop()
        raise
    try:
        yield broker_url
    finally:
        w1.stop()
        w2.stop()
        monapp.app.close()


def cli(*args: str, ok: bool = True) -> Any:
    """Run ``polyq -A tests.core.monitor.monapp <args>``; parse stdout as JSON when --json."""
    takes_timeout = args[0] in ("status", "inspect", "control") and args[1:2] not in (
        ("revoke",),
        ("scheduled",),
    )
    if takes_timeout and "-t" not in args:
        # Under load a reply can take over a second; with -d the wait ends as soon as
        # every destination answered, so a long timeout costs nothing when all is well.
        args = (*args, "-t", "5" if "-d" in args else "2")
    result = CliRunner().invoke(main, ["-A", APP, *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    if "--json" in args and result.exit_code == 0:
        return json.loads(result.stdout)
    return result


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_status_lists_both_workers(cluster: str) -> None:
    result = cli("status")
    assert f"{W1}: OK" in result.stdout and f"{W2}: OK" in result.stdout
    assert "2 nodes online." in result.stdout
    assert set(cli("status", "--json")) == {W1, W2}


def test_inspect_ping_registered_stats_with_destination(cluster: str) -> None:
    assert cli("inspect", "ping", "--json") == {W1: {"ok": "pong"}, W2: {"ok": "pong"}}
    only = cli("inspect", "registered", "-d", W2, "--json")
    assert list(only) == [W2]
    assert "tests.core.monitor.monapp.add" in only[W2]
    stats = cli("inspect", "stats", "--json")
    assert stats[W1]["pool"] == "prefork" and stats[W1]["concurrency"] == 1
    assert stats[W2]["pool"] == "threads" and stats[W2]["concurrency"] == 2
    assert stats[W1]["broker"] == monapp.app.transport.describe()  # redacted form
    human = cli("inspect", "stats", "-d", W1).stdout
    assert f"-> {W1}: OK" in human and W2 not in human


def test_active_reserved_and_revoke_terminate(cluster: str) -> None:
    blocker = monapp.sleep.apply_async((30,), queue="w1q")
    waiting = monapp.add.apply_async((1, 2), queue="w1q")

    def active_on_w1() -> list[dict[str, Any]]:
        return [
            t for t in cli("inspect", "active", "-d", W1, "--json")[W1] if t["id"] == blocker.id
        ]

    job = wait_for(active_on_w1, what="the blocker running on w1")[0]
    assert job["name"] == "tests.core.monitor.monapp.sleep" and job["args"] == "[30]"
    assert job["time_start"] <= time.time()
    # w1 prefetches one message at most, so `waiting` stays in the broker: not reserved.
    assert cli("inspect", "reserved", "-d", W1, "--json")[W1] == []
    result = cli("control", "revoke", blocker.id, "--terminate")
    assert "revoked 1 task(s)" in result.stdout
    assert wait_for(lambda: blocker.state == states.REVOKED, what="blocker revoked")
    assert waiting.get(timeout=15) == 3
    assert blocker.id in cli("inspect", "revoked", "--json")[W1]


def test_inspect_scheduled_reads_the_broker(cluster: str) -> None:
    later = monapp.add.apply_async((5, 5), countdown=120)
    found = cli("inspect", "scheduled", "--json")
    mine = [m for m in found if m["id"] == later.id]
    assert mine and mine[0]["name"] == "tests.core.monitor.monapp.add"
    assert 100 < mine[0]["eta"] - time.time() <= 121
    assert later.id in cli("inspect", "scheduled").stdout
    monapp.app.control.revoke(later.id)


def test_rate_limit_and_time_limit(cluster: str) -> None:
    replies = cli("control", "rate_limit", "tests.core.monitor.monapp.add", "100/s", "--json")
    assert set(replies) == {W1, W2}
    assert all("100/s" in r["ok"] for r in replies.values())
    assert cli("control", "rate_limit", "tests.core.monitor.monapp.add", "0", "--json")[W1]["ok"]
    unknown = cli("control", "rate_limit", "nope", "1/s", "-d", W1, "--json")
    assert "unknown task" in unknown[W1]["error"]
    # A bad rate is refused by the client before anything is sent (workers check too).
    bad = cli("control", "rate_limit", "tests.core.monitor.monapp.add", "ten", "-d", W1, ok=False)
    assert bad.exit_code == 1 and "bad rate limit 'ten'" in bad.output
    # Time limits: prefork enforces both; threads cannot, and says so.
    limits = cli("control", "time_limit", "tests.core.monitor.monapp.sleep", "5", "10", "--json")
    assert "soft=5.0 hard=10.0" in limits[W1]["ok"]
    assert "cannot enforce" in limits[W2]["error"]
    human = cli("control", "time_limit", "tests.core.monitor.monapp.sleep", "0", "0", "-d", W1)
    assert f"-> {W1}: OK" in human.stdout


def test_pool_grow_and_shrink(cluster: str) -> None:
    assert "pool now 3" in cli("control", "pool_grow", "1", "-d", W2, "--json")[W2]["ok"]
    assert cli("inspect", "stats", "-d", W2, "--json")[W2]["concurrency"] == 3
    assert "pool now 2" in cli("control", "pool_shrink", "1", "-d", W2, "--json")[W2]["ok"]
    assert cli("inspect", "stats", "-d", W2, "--json")[W2]["concurrency"] == 2
    grown = cli("control", "pool_grow", "-d", W1, "--json")[W1]["ok"]
    assert "pool now 2" in grown
    cli("control", "pool_shrink", "-d", W1, "--json")
    assert cli("inspect", "stats", "-d", W1, "--json")[W1]["concurrency"] == 1


def test_add_and_cancel_consumer(cluster: str) -> None:
    assert (
        "consuming from extra"
        in cli("control", "add_consumer", "extra", "-d", W2, "--json")[W2]["ok"]
    )
    queues = cli("inspect", "active_queues", "--json")
    assert {"name": "extra"} in queues[W2] and {"name": "extra"} not in queues[W1]
    result = monapp.add.apply_async((20, 22), queue="extra")
    assert result.get(timeout=15) == 42
    assert result.worker == W2
    assert "no longer" in cli("control", "cancel_consumer", "extra", "-d", W2, "--json")[W2]["ok"]
    assert {"name": "extra"} not in cli("inspect", "active_queues", "-d", W2, "--json")[W2]
    only = cli("control", "cancel_consumer", "celery", "-d", W2, "--json")[W2]
    assert "only queue" in only["error"]


def test_nobody_answers_exits_nonzero(cluster: str) -> None:
    result = cli("inspect", "ping", "-d", "ghost@nowhere", "-t", "0.3", ok=False)
    assert result.exit_code == 1
    assert "no worker replied" in result.output


def test_shutdown_one_worker(broker_url: str, cluster: str) -> None:
    extra = start_worker(broker_url, "-n", "w3@%h", "-P", "threads", "-c", "1")
    try:
        reply = cli("control", "shutdown", "-d", f"w3@{HOST}", "--json")
        assert reply == {f"w3@{HOST}": {"ok": "shutting down"}}
        assert extra.wait(timeout=15) == 0
        assert set(cli("status", "--json")) == {W1, W2}
    finally:
        extra.stop()


def test_reserved_lists_prefetched_tasks(cluster: str) -> None:
    cli("control", "add_consumer", "resq", "-d", W2, "--json")
    try:
        sent = [monapp.sleep.apply_async((1.5,), queue="resq") for _ in range(4)]
        ids = {r.id for r in sent}

        def split() -> tuple[set[str], set[str]] | None:
            active = {t["id"] for t in cli("inspect", "active", "-d", W2, "--json")[W2]}
            reserved = {t["id"] for t in cli("inspect", "reserved", "-d", W2, "--json")[W2]}
            return (
                (active, reserved) if len(active & ids) == 2 and len(reserved & ids) == 2 else None
            )

        active, reserved = wait_for(split, what="two running and two reserved on w2")
        assert active | reserved >= ids and not active & reserved
        human = cli("inspect", "reserved", "-d", W2).stdout
        assert "tests.core.monitor.monapp.sleep" in human and "args=[1.5]" in human
        assert all(r.get(timeout=15) == 1.5 for r in sent)
    finally:
        cli("control", "cancel_consumer", "resq", "-d", W2, "--json")
