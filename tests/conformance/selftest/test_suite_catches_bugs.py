"""The conformance suite is itself tested: run it against deliberately broken
plugins (``broken.py``) and check it fails on each, naming the tests that catch the
bug, and passes on the real memory plugins.

Each run is a separate pytest process (the suite's lease and delay tests mostly
sleep); all of them start at once, so the whole check takes about as long as one
run of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent

#: run name → (suite, plugin class or None for the real one, tests that must fail). The
#: class is a name in broken.py, or ``module.Class`` for one in plugins/.
RUNS: dict[str, tuple[str, str | None, set[str]]] = {
    "memory-transport": ("TransportSuite", None, set()),
    "memory-backend": ("BackendSuite", None, set()),
    "memory-size-limited": ("TransportSuite", "SizeLimited", set()),
    # A correct broker without native delay (max_delay=0): only the delay tests skip.
    "memory-no-native-delay": (
        "TransportSuite",
        "nodelay_plugin.NoDelayMemoryTransport",
        set(),
    ),
    "ignores-priority": ("TransportSuite", "IgnoresPriority", {"test_higher_priority_first"}),
    "redelivers-early": (
        "TransportSuite",
        "RedeliversEarly",
        {
            "test_leased_message_is_hidden_from_other_consumers",
            "test_lease_ends_after_visibility_timeout",
        },
    ),
    "loses-nacked": (
        "TransportSuite",
        "LosesNacked",
        {"test_nack_requeues_now", "test_nack_with_delay"},
    ),
    "holds-eta-in-producer": (
        "TransportSuite",
        "HoldsEtaInProducer",
        {
            "test_delayed_message_is_held_by_the_broker",
            "test_scheduled_lists_delayed_messages",
            "test_purge_removes_ready_and_delayed",
        },
    ),
    "drops-headers": ("TransportSuite", "DropsHeaders", {"test_round_trip_is_byte_exact"}),
    "ignores-size-limit": (
        "TransportSuite",
        "IgnoresSizeLimit",
        {"test_message_too_large_is_refused_before_sending"},
    ),
    "keeps-deleted-queue": (
        "TransportSuite",
        "KeepsDeletedQueue",
        {"test_delete_queue_removes_everything"},
    ),
    "forgets-capabilities": (
        "TransportSuite",
        "ForgetsCapabilities",
        {"test_capabilities_are_declared"},
    ),
    "counts-repeats": (
        "BackendSuite",
        "CountsRepeats",
        {"test_add_to_set_counts_distinct_members", "test_add_to_set_is_atomic"},
    ),
    "serves-expired": (
        "BackendSuite",
        "ServesExpired",
        {"test_value_expires", "test_get_many_and_set_many", "test_keys_lists_live_keys_by_prefix"},
    ),
    "overwrites-final-states": (
        "BackendSuite",
        "OverwritesFinalStates",
        {
            "test_final_state_is_not_replaced_by_stale_states",
            "test_first_final_state_wins",
            "test_final_state_expires",
            "test_final_state_wins_race_with_stale_states",
            "test_racing_final_states_have_one_winner",
        },
    ),
    "checks-then-writes-state": (
        "BackendSuite",
        "ChecksThenWritesState",
        {
            "test_final_state_wins_race_with_stale_states",
            "test_racing_final_states_have_one_winner",
        },
    ),
}

TEMPLATE = """
import pytest
from polyq.testing.conformance import {suite}

class TestUnderTest({suite}):
    @pytest.fixture(scope="class")
    def {kind}_url(self):
        return "memory://selftest-{unique}"
{hook}
"""

HOOK = """
    def make_{kind}(self, url, **options):
        from {module} import {cls}
        return {cls}(url, **options)
"""

#: Test-only plugins (and their entry points), on PYTHONPATH for every run.
PLUGINS = HERE / "plugins"


def _write_test(directory: Path, suite: str, cls: str | None) -> Path:
    kind = "transport" if suite == "TransportSuite" else "backend"
    hook = ""
    if cls:
        module, _, name = cls.rpartition(".")
        hook = HOOK.format(kind=kind, module=module or "broken", cls=name)
    source = TEMPLATE.format(suite=suite, kind=kind, unique=uuid.uuid4().hex, hook=hook)
    path = directory / "test_under_test.py"
    path.write_text(textwrap.dedent(source))
    return path


def _outcomes(junit: Path) -> dict[str, str]:
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        results[case.get("name", "?")] = kinds.pop() if kinds else "passed"
    return results


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Run the suite once per entry of RUNS, all in parallel; test name → outcome."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
    }
    procs = {}
    for name, (suite, cls, _) in RUNS.items():
        directory = tmp_path_factory.mktemp(name)
        test_file = _write_test(directory, suite, cls)
        junit = directory / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(test_file),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "--timeout=60",
            f"--rootdir={directory}",
        ]
        if "size-limit" in name:
            # Only the size tests differ from the memory run: keep the self-test fast.
            command += ["-k", "large or byte_exact"]
        log = (directory / "log.txt").open("w")
        procs[name] = (
            subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=log),
            junit,
            log,
        )
    results = {}
    try:
        for name, (proc, junit, log) in procs.items():
            proc.wait(timeout=150)
            log.close()
            results[name] = _outcomes(junit)
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", [n for n in RUNS if n.startswith("memory-")])
def test_suite_passes_on_the_reference_plugins(
    outcomes: dict[str, dict[str, str]], name: str
) -> None:
    results = outcomes[name]
    bad = {test: outcome for test, outcome in results.items() if outcome in ("failure", "error")}
    assert not bad, f"the suite fails on the real memory plugin: {bad}"
    assert sum(outcome == "passed" for outcome in results.values()) >= 3


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", [n for n in RUNS if not n.startswith("memory-")])
def test_suite_catches_broken_plugin(outcomes: dict[str, dict[str, str]], name: str) -> None:
    results = outcomes[name]
    failed = {test for test, outcome in results.items() if outcome in ("failure", "error")}
    expected = RUNS[name][2]
    assert expected <= failed, (
        f"{RUNS[name][1]} should fail {sorted(expected)}; failed: {sorted(failed)}"
    )
    # Shown with -s: the full list of tests that noticed the bug.
    print(f"{RUNS[name][1]}: caught by {sorted(failed)}")


#: The transport tests that need the broker to hold a delay itself.
NATIVE_DELAY_TESTS = {
    "test_delayed_message_not_before_its_time",
    "test_short_delay_is_not_blocked_by_a_long_one",
    "test_delayed_message_is_held_by_the_broker",
    "test_scheduled_lists_delayed_messages",
    "test_nack_with_delay",
}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_no_native_delay_skips_only_the_native_delay_tests(
    outcomes: dict[str, dict[str, str]],
) -> None:
    reference = {t for t, o in outcomes["memory-transport"].items() if o == "skipped"}
    skipped = {t for t, o in outcomes["memory-no-native-delay"].items() if o == "skipped"}
    assert skipped == reference | NATIVE_DELAY_TESTS, (
        f"max_delay=0 should skip exactly the native-delay tests; "
        f"extra: {sorted(skipped - reference - NATIVE_DELAY_TESTS)}, "
        f"run anyway: {sorted(NATIVE_DELAY_TESTS - skipped)}"
    )
