"""Take the dashboard screenshots in docs/ (or anywhere):

    python -m tests.core.monitor.screenshots docs/images

Starts two workers with events on a temporary SQLite broker, a monitor, sends
half a minute of mixed traffic (successes, failures, progress, a burst that
fills the queue), and saves the overview, workers, tasks, task and queues pages
with headless Chromium (Debian's chromium + chromium-driver, via Selenium).
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from werkzeug.serving import make_server

from polyq.monitor.web import Monitor
from tests.core.monitor import browser, monapp
from tests.core.monitor.support import start_worker, use_broker


def main(out: Path, seconds: float = 30.0) -> None:
    """Write overview.png, workers.png, tasks.png, task.png and queues.png to ``out``."""
    reason = browser.missing()
    if reason:
        raise SystemExit(f"cannot take screenshots: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="polyq-shots-") as tmp:
        url = f"sqlite:///{tmp}/polyq.sqlite3"
        app = use_broker(monapp.app, url)
        monitor = Monitor(app, sample_interval=1.0)
        monitor.start()
        server = make_server("127.0.0.1", 0, monitor.flask, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        workers = [
            start_worker(url, "-n", "alpha@%h", "-P", "prefork", "-c", "2", "-E"),
            start_worker(url, "-n", "beta@%h", "-P", "threads", "-c", "4", "-E"),
        ]
        driver = browser.chromium(1360, 860)
        try:
            rng = random.Random(8)
            deadline = time.monotonic() + seconds
            burst_at = time.monotonic() + seconds / 3
            while time.monotonic() < deadline:
                for _ in range(rng.randint(2, 8)):
                    app.send_task(
                        "tests.core.monitor.monapp.add", (rng.randint(1, 99), rng.randint(1, 99))
                    )
                if rng.random() < 0.3:
                    monapp.boom.delay(f"bad input #{rng.randint(1, 999)}")
                if rng.random() < 0.2:
                    monapp.sleep.delay(round(rng.uniform(0.5, 2.0), 2))
                if burst_at and time.monotonic() > burst_at:
                    for _ in range(60):
                        monapp.sleep.delay(0.15)
                    burst_at = 0.0
                time.sleep(0.5)
            monapp.progress.delay(40)  # running while the pictures are taken
            monapp.sleep.delay(20)
            time.sleep(2.5)
            for page in ("overview", "workers", "tasks", "queues"):
                driver.get(f"{base}/{'' if page == 'overview' else page}")
                time.sleep(2.0)  # a refresh or two
                driver.save_screenshot(str(out / f"{page}.png"))
            failed = monitor.state.task_list(state="FAILURE", limit=1)
            if failed:
                driver.get(f"{base}/tasks/{failed[0]['uuid']}")
                time.sleep(2.0)
                driver.save_screenshot(str(out / "task.png"))
        finally:
            driver.quit()
            for w in workers:
                w.stop()
            server.shutdown()
            monitor.stop()
            app.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
