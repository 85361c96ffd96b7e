"""The dashboard in a real headless browser (Debian's chromium + chromium-driver,
driven by Selenium) against real worker processes on a real broker (SQLite).

1. The workers page lists the worker; a task moves from RECEIVED to SUCCESS on
   the tasks page.
2. A revoke clicked on the page (and confirmed) stops a queued task waiting
   behind a blocker, and it stays revoked after the worker restarts: the task
   is still in the broker when the worker is replaced, so only the durable
   revoke can stop it.
3. Revoke clicked on a task whose id is ``../workers/<name>/shutdown?x=``
   revokes that id and shuts no worker down (the old page put the id unencoded
   in the request URL, which the browser resolved to the worker's shutdown).

Screenshots go to $POLYQ_ARTIFACTS/monitor (default ./artifacts/monitor).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from polyq import states
from polyq.events import enable_sent_events
from polyq.monitor.web import Monitor
from polyq.testing import services
from tests.core.monitor import browser, monapp
from tests.core.monitor.support import start_worker, use_broker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    reason = browser.missing()
    if reason:
        wanted = {p.strip() for p in os.environ.get("POLYQ_TEST_REQUIRE", "").split(",")}
        if wanted & {"all", "browser"}:
            pytest.fail(f"browser tests cannot run: {reason}", pytrace=False)
        pytest.skip(f"browser tests need Chromium: {reason}")
    d = browser.chromium()
    d.set_page_load_timeout(20)
    yield d
    d.quit()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(broker URL, dashboard base URL): a monitor served from a thread."""
    url = services.sqlite_url(tmp_path)
    app = use_broker(monapp.app, url)
    monitor = Monitor(app, sample_interval=0.5)
    monitor.start()
    server = make_server("127.0.0.1", 0, monitor.flask, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        monitor.stop()
        app.close()


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # the table is being redrawn under us
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def row_state(d: Any, task_id: str) -> str | None:
    rows = d.find_elements("css selector", f'#tasks tr[data-id="{task_id}"] .state')
    return rows[0].text if rows else None


def test_workers_page_and_a_task_from_received_to_succeeded(
    driver: Any, dashboard: tuple[str, str], artifacts: Path
) -> None:
    url, base = dashboard
    # One thread, prefetching four: the second task waits as RECEIVED behind the first.
    worker = start_worker(url, "-n", "page@%h", "-P", "threads", "-c", "1", "-E")
    try:
        driver.get(f"{base}/workers")
        row = f'#workers tr[data-hostname="page@{HOST}"]'
        wait_for(
            lambda: "online" in driver.find_element("css selector", row).text,
            what="the worker listed online",
        )
        assert "threads" in driver.find_element("css selector", row).text
        driver.save_screenshot(str(artifacts / "workers.png"))

        driver.get(f"{base}/tasks")
        blocker = monapp.sleep.delay(2.5)
        task = monapp.add.delay(20, 22)
        seen: list[str] = []

        def moved() -> bool:
            state = row_state(driver, task.id)
            if state and (not seen or seen[-1] != state):
                seen.append(state)
            return state == "SUCCESS"

        wait_for(moved, timeout=20, what="the task to succeed on the page")
        assert seen[0] == "RECEIVED", seen
        assert seen[-1] == "SUCCESS"
        assert task.get(timeout=5) == 42 and blocker.get(timeout=5) == 2.5
        text = driver.find_element("css selector", f'#tasks tr[data-id="{task.id}"]').text
        assert "tests.core.monitor.monapp.add" in text and "[20, 22]" in text
        driver.save_screenshot(str(artifacts / "tasks.png"))

        driver.get(f"{base}/tasks/{task.id}")
        wait_for(lambda: "42" in driver.find_element("id", "task").text, what="the result")
        driver.save_screenshot(str(artifacts / "task.png"))
        driver.get(f"{base}/queues")
        wait_for(
            lambda: driver.find_elements("css selector", '#queues tr[data-queue="celery"]'),
            what="the celery queue",
        )
        driver.save_screenshot(str(artifacts / "queues.png"))
    finally:
        worker.stop()


def test_revoke_from_the_page_survives_a_worker_restart(
    driver: Any, dashboard: tuple[str, str], artifacts: Path
) -> None:
    url, base = dashboard
    app = monapp.app
    # Prefetch one: while the blocker runs, the queued task stays in the broker.
    args = ["-n", "revoke@%h", "-P", "threads", "-c", "1", "--prefetch-multiplier", "1", "-E"]
    worker = start_worker(url, *args)
    stop_sent = enable_sent_events(app)  # so the page lists the task still in the broker
    try:
        blocker = monapp.sleep.delay(3)
        queued = monapp.add.delay(1, 1)

        def blocker_running() -> bool:
            replies = app.control.inspect(timeout=0.5).active()
            return any(
                t["id"] == blocker.id for r in replies for tasks in r.values() for t in tasks
            )

        wait_for(blocker_running, what="the blocker to start")
        driver.get(f"{base}/tasks")
        button = f'#tasks tr[data-id="{queued.id}"] button.revoke'
        wait_for(lambda: row_state(driver, queued.id) == "PENDING", what="the queued task listed")
        wait_for(
            lambda: driver.find_element("css selector", button).click() or True,
            what="clicking Revoke",
        )
        wait_for(lambda: driver.find_element("id", "confirm").is_displayed(), what="the dialog")
        assert queued.id in driver.find_element("id", "confirm-text").text
        driver.save_screenshot(str(artifacts / "revoke-confirm.png"))
        driver.find_element("id", "confirm-ok").click()
        wait_for(lambda: queued.id in app.control.revoked(), what="the durable revoke")
        assert blocker_running()  # so the queued task is still in the broker
        assert queued.state == states.PENDING

        # Restart the worker: the new one gets the task from the broker and must
        # know it is revoked from the durable record alone.
        worker.stop()
        assert blocker.get(timeout=5) == 3
        assert queued.state == states.PENDING
        worker = start_worker(url, *args)
        wait_for(lambda: queued.state == states.REVOKED, what="the task revoked after restart")
        wait_for(lambda: row_state(driver, queued.id) == "REVOKED", what="REVOKED on the page")
        follow = monapp.add.delay(2, 2)
        assert follow.get(timeout=15) == 4  # the new worker runs other tasks normally
        assert queued.state == states.REVOKED
        driver.save_screenshot(str(artifacts / "revoked.png"))
    finally:
        stop_sent()
        worker.stop()


def test_revoke_of_a_hostile_id_revokes_it_and_shuts_no_worker_down(
    driver: Any, dashboard: tuple[str, str], artifacts: Path
) -> None:
    url, base = dashboard
    app = monapp.app
    worker = start_worker(url, "-n", "victim@%h", "-P", "threads", "-c", "1", "-E")
    hostname = f"victim@{HOST}"
    hostile = f"../workers/{hostname}/shutdown?x="
    stop_sent = enable_sent_events(app)  # so the page lists the task waiting in the broker
    try:
        # A task id is the caller's choice (say, taken from a web form).
        monapp.add.apply_async((1, 1), task_id=hostile, countdown=300)
        driver.get(f"{base}/tasks")
        button = f'#tasks tr[data-id="{hostile}"] button.revoke'
        wait_for(lambda: row_state(driver, hostile) == "PENDING", what="the hostile task listed")
        wait_for(
            lambda: driver.find_element("css selector", button).click() or True,
            what="clicking Revoke",
        )
        wait_for(lambda: driver.find_element("id", "confirm").is_displayed(), what="the dialog")
        driver.find_element("id", "confirm-ok").click()
        wait_for(lambda: hostile in app.control.revoked(), what="the hostile id revoked")
        driver.save_screenshot(str(artifacts / "revoke-hostile-id.png"))
        # The worker was not told to shut down: it still runs and answers.
        time.sleep(1.0)
        assert worker.proc.poll() is None, "the worker exited"
        replies = app.control.ping(destination=[hostname], timeout=2.0)
        assert [hostname] == [h for r in replies for h in r], replies

        # No URL can name it, so its id shows as text, not as a link (the table is
        # redrawn every 1.5 s: each try finds the cell afresh).
        def shown_as_text() -> bool:
            cell = driver.find_element("css selector", f'#tasks tr[data-id="{hostile}"] td')
            return bool(cell.text) and not cell.find_elements("css selector", "a")

        wait_for(shown_as_text, what="the id shown as text")
    finally:
        stop_sent()
        worker.stop()
