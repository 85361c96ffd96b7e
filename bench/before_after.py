"""polyq against an earlier polyq, in one run: Redis, RabbitMQ and SQLite drain and
round trip of two source trees, interleaved round by round so both see the same machine.

Each tree is measured with its own copy of the benchmark scripts (``bench/redis_peers.py
--systems polyq``, ``bench/rabbitmq_peers.py --systems polyq``, and
``bench/sqlite_vs_huey.py``'s polyq half), each starting its private broker, so a
restructuring that moved modules is measured with the code it shipped::

    python3 bench/before_after.py --before 85de4c2 --rounds 3

``--before`` is a git revision, checked out into a temporary worktree (removed at the
end); the "after" tree is this checkout. Figures are medians over the rounds; the last
column is after / before (for latencies, before / after: above 1 is faster either way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SQLITE = """
import json, sys, tempfile
sys.path.insert(0, {tree!r})
from bench.sqlite_vs_huey import bench_polyq
print("FIGURES " + json.dumps(bench_polyq(tempfile.mkdtemp(dir={tmp!r}), {n}, {k})))
"""


def _env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return env


def _peers(tree: Path, script: str, n: int, k: int, tmp: Path) -> dict[str, float]:
    out = tmp / f"{script}-{os.getpid()}.json"
    subprocess.run(
        [sys.executable, str(tree / "bench" / script), "--systems", "polyq", "--n", str(n),
         "--k", str(k), "--json", str(out)],
        env=_env(tree), cwd=tree, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    figures: dict[str, float] = json.loads(out.read_text())["polyq"]
    return figures


def _sqlite(tree: Path, n: int, k: int, tmp: Path) -> dict[str, float]:
    code = SQLITE.format(tree=str(tree), tmp=str(tmp), n=n, k=k)
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(tree), cwd=tmp, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("FIGURES "))
    figures: dict[str, float] = json.loads(line.removeprefix("FIGURES "))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="tasks drained (Redis, RabbitMQ)")
    parser.add_argument("--sqlite-n", type=int, default=5_000, help="tasks drained (SQLite)")
    parser.add_argument("--k", type=int, default=300, help="round trips timed")
    parser.add_argument("--brokers", default="redis,rabbitmq,sqlite")
    args = parser.parse_args()
    brokers = args.brokers.split(",")
    with tempfile.TemporaryDirectory(prefix="polyq-ba-") as tmpdir:
        tmp = Path(tmpdir)
        before = tmp / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before),
             args.before], check=True,
        )  # fmt: skip
        trees = {"before": before, "after": ROOT}
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        try:
            for round_no in range(args.rounds):
                for broker in brokers:
                    for label, tree in trees.items():
                        if broker == "sqlite":
                            figures = _sqlite(tree, args.sqlite_n, args.k, tmp)
                        else:
                            script = f"{broker}_peers.py"
                            figures = _peers(tree, script, args.n, args.k, tmp)
                        runs.setdefault((broker, label), []).append(figures)
                        print(f"round {round_no + 1} {broker} {label}: {figures}", file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False
            )
    print(f"\nbefore = {args.before}, after = this tree; median of {args.rounds} rounds")
    print("| broker | figure | before | after | ratio |")
    print("|---|---|---|---|---|")
    for broker in brokers:
        for key, better_low in (("enqueue", False), ("drain", False), ("p50", True), ("p99", True)):
            b = statistics.median(r[key] for r in runs[(broker, "before")])
            a = statistics.median(r[key] for r in runs[(broker, "after")])
            ratio = b / a if better_low else a / b
            unit = " ms" if better_low else "/s"
            print(f"| {broker} | {key} | {b:,.2f}{unit} | {a:,.2f}{unit} | x{ratio:.2f} |")


if __name__ == "__main__":
    main()
