"""The cost of message signing per task, on a private Redis server.

For each mode (unsigned; X.509 with an RSA-2048 key; X.509 with an Ed25519 key; the
shared-key HMAC mode), in one run (the modes alternate over ``--rounds`` rounds and
medians are shown: on a busy machine single runs move a lot):

- enqueue N no-op tasks with no worker running (the client signs each one), timed;
- start one worker (prefork, -c 2; its children verify each message) and time from
  "ready" until the queue is empty (every message acked): the drain rate;
- in this process, time signing and verifying one message (microseconds, median of
  1,000), so the per-task cost is shown apart from the broker.

    python bench/signing_cost.py [--tasks 3000] [--rounds 3] [--modes unsigned,rsa,ed25519,hmac]

Keys and certificates are made in a temporary directory (polyq.testing.pki); the
redis-server is started on a free loopback port and stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT]

from polyq import Polyq  # noqa: E402
from polyq.message import TaskMessage, encode  # noqa: E402
from polyq.testing.pki import make_pki  # noqa: E402
from polyq.testing.worker import WorkerProcess  # noqa: E402
from polyq.transport import Delivery  # noqa: E402

TASKS_MODULE = """
from polyq import Polyq

app = Polyq("sigq")


@app.task(name="sigq.noop", ignore_result=True)
def noop(i):
    pass
"""

SHARED_KEY = "bench-shared-key-0123456789abcdef"


def settings(mode: str, tmp: str) -> dict[str, str]:
    """The worker's environment (and the client's settings) for ``mode``."""
    if mode == "unsigned":
        return {}
    auth = {"POLYQ_TASK_SERIALIZER": "auth", "POLYQ_ACCEPT_CONTENT": '["auth"]'}
    if mode == "hmac":
        return {**auth, "POLYQ_SECURITY_SHARED_KEY": SHARED_KEY}
    pki = make_pki(os.path.join(tmp, mode), kind="rsa" if mode == "rsa" else "ed25519")
    return {
        **auth,
        "POLYQ_SECURITY_KEY": pki.key,
        "POLYQ_SECURITY_CERTIFICATE": pki.cert,
        "POLYQ_SECURITY_CERT_STORE": pki.store,
    }


def client(url: str, env: dict[str, str]) -> Polyq:
    app = Polyq("bench.signing", broker=url, backend=url)
    if env:
        app.setup_security(
            key=env.get("POLYQ_SECURITY_KEY"),
            cert=env.get("POLYQ_SECURITY_CERTIFICATE"),
            store=env.get("POLYQ_SECURITY_CERT_STORE"),
            shared_key=env.get("POLYQ_SECURITY_SHARED_KEY"),
        )
    return app


def micro(app: Polyq) -> tuple[float, float, int]:
    """Median microseconds to sign, and to verify, one small task message, and the
    size of its signature header."""
    sec = app.security
    if sec is None:
        return 0.0, 0.0, 0
    out = encode(TaskMessage(task="sigq.noop", args=[1]), "json")
    signs, verifies = [], []
    for _ in range(1000):
        t0 = time.perf_counter()
        signed = sec.signer.sign_task(out)
        t1 = time.perf_counter()
        sec.verifier.verify_task(Delivery("q", "m", signed.body, dict(signed.headers), 1))
        t2 = time.perf_counter()
        signs.append(t1 - t0)
        verifies.append(t2 - t1)
    size = len(signed.headers["signature"])
    return statistics.median(signs) * 1e6, statistics.median(verifies) * 1e6, size


def run_mode(url: str, mode: str, tasks: int, tmp: str) -> dict[str, float]:
    env = settings(mode, tmp)
    app = client(url, env)
    queue = f"sig-{uuid.uuid4().hex[:8]}"
    warm = f"{queue}-warm"  # connect (and load the keys) before timing
    app.send_task("sigq.noop", (0,), queue=warm)
    app.transport.delete_queue(warm)
    started = time.perf_counter()
    for i in range(tasks):
        app.send_task("sigq.noop", (i,), queue=queue)
    enqueue = tasks / (time.perf_counter() - started)
    args = ["-P", "prefork", "-c", "2", "-Q", queue, "-l", "INFO", "-n", f"{mode}@%h"]
    worker = WorkerProcess(
        "sigq",
        args,
        env={"POLYQ_BROKER_URL": url, "POLYQ_RESULT_BACKEND": url, "PYTHONPATH": f"{tmp}:{ROOT}",
             **env},
        cwd=tmp,
    )  # fmt: skip
    try:
        worker.start(ready_timeout=60)
        t0 = time.monotonic()
        while app.transport.size(queue) > 0:
            time.sleep(0.01)
        drain = tasks / (time.monotonic() - t0)
        refused = len(app.transport.dead_letters(queue, 10))
    finally:
        worker.stop()
    sign_us, verify_us, size = micro(app)
    app.transport.delete_queue(queue)
    app.close()
    return {
        "enqueue": enqueue,
        "drain": drain,
        "sign_us": sign_us,
        "verify_us": verify_us,
        "header_bytes": float(size),
        "dead_letters": float(refused),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the private redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="no-op tasks per mode")
    parser.add_argument("--modes", default="unsigned,rsa,ed25519,hmac")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; modes alternate, the median is shown"
    )
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="polyq-signbench-") as tmp:
        with open(os.path.join(tmp, "sigq.py"), "w") as f:
            f.write(TASKS_MODULE)
        port = _free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for(port)
            for _ in range(args.rounds):
                for mode in args.modes.split(","):
                    run = run_mode(f"redis://127.0.0.1:{port}/0", mode, args.tasks, tmp)
                    runs.setdefault(mode, []).append(run)
                    print(f"{mode}: {run}", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(10)
    rows = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    print(
        f"\nN={args.tasks} no-op tasks per mode, median of {args.rounds} alternating rounds, "
        "one private redis-server, prefork -c 2\n"
    )
    print("| mode | enqueue/s | drain/s | sign µs | verify µs | signature header bytes |")
    print("|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(
            f"| {mode} | {r['enqueue']:,.0f} | {r['drain']:,.0f} | {r['sign_us']:.0f} | "
            f"{r['verify_us']:.0f} | {r['header_bytes']:.0f} |"
        )


if __name__ == "__main__":
    main()
