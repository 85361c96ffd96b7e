"""The argument checks of remote control (polyq.control_args), the allow-list setting,
and the trial of queues added at run time (polyq.worker.queue_trials)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from polyq.config import DEFAULTS, Settings
from polyq.control_args import (
    ALL_COMMANDS,
    READ_ONLY_COMMANDS,
    ControlArgumentError,
    Limits,
    allowed_commands,
    check,
    check_envelope,
    reserved_queue,
)
from polyq.exceptions import BrokerError, ConfigurationError
from polyq.transport import Delivery
from polyq.worker.queue_trials import QueueTrials
from polyq.worker.remote import COMMANDS

LIMITS = Limits(max_concurrency=8, min_time_limit=1.0, max_rate_interval=3600.0)


def test_every_command_is_known_and_allowed_by_default() -> None:
    assert set(ALL_COMMANDS) == set(COMMANDS) | {"revoke"}
    assert set(READ_ONLY_COMMANDS) < set(ALL_COMMANDS)
    assert DEFAULTS["worker_remote_control_commands"] == list(ALL_COMMANDS)
    assert DEFAULTS["worker_enable_remote_control"] is True


def test_allow_list_forms() -> None:
    assert allowed_commands(["ping", "stats"]) == {"ping", "stats"}
    assert allowed_commands("ping, stats,revoke") == {"ping", "stats", "revoke"}
    assert allowed_commands(None) == set(ALL_COMMANDS)
    with pytest.raises(ConfigurationError, match="worker_remote_control_commands"):
        allowed_commands(3)


def test_allow_list_from_the_environment() -> None:
    conf = Settings({"POLYQ_WORKER_REMOTE_CONTROL_COMMANDS": '["ping", "revoke"]'})
    assert allowed_commands(conf.worker_remote_control_commands) == {"ping", "revoke"}
    conf = Settings({"POLYQ_WORKER_REMOTE_CONTROL_COMMANDS": "ping,stats"})
    assert allowed_commands(conf.worker_remote_control_commands) == {"ping", "stats"}


@pytest.mark.parametrize(
    ("command", "arguments", "message"),
    [
        ("pool_grow", {"n": -100}, "n must be a whole number of pool slots from 1 to 8"),
        ("pool_grow", {"n": 9}, "from 1 to 8"),
        ("pool_shrink", {"n": 0}, "n must be"),
        ("pool_shrink", {"n": True}, "n must be"),
        ("pool_grow", {"n": 1.5}, "n must be"),
        ("time_limit", {"task_name": "t", "hard": 0.01}, "hard must be a number of seconds"),
        ("time_limit", {"task_name": "t", "soft": -1}, "soft must be"),
        ("time_limit", {"task_name": "t", "hard": float("inf")}, "hard must be"),
        ("time_limit", {"task_name": "t", "hard": "10"}, "hard must be"),
        ("time_limit", {"task_name": "t", "soft": 9, "hard": 9}, "soft (9) must be below hard"),
        ("time_limit", {"hard": 10}, "task_name must be a name"),
        ("rate_limit", {"task_name": "t", "rate_limit": "1e-9/s"}, "one task per 3600 s"),
        ("rate_limit", {"task_name": "t", "rate_limit": "-1/m"}, "must be positive"),
        ("rate_limit", {"task_name": "t", "rate_limit": "10/d"}, "bad rate limit"),
        ("rate_limit", {"task_name": "t", "rate_limit": [1]}, "bad rate limit"),
        ("add_consumer", {"queue": "jobs.dlq"}, "dead-letter"),
        ("add_consumer", {"queue": "jobs\x1b"}, "control character"),
        ("cancel_consumer", {"queue": ""}, "queue must be a name"),
        ("revoke", {"ids": []}, "ids must be a list of 1 to 10000"),
        ("revoke", {"ids": ["a"], "terminate": "yes"}, "terminate must be true or false"),
        ("revoke", {"ids": ["a"], "signal": 999}, "signal must name a signal"),
        ("nope", {}, "unknown command 'nope'"),
    ],
)
def test_bad_arguments_name_the_argument_and_range(
    command: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ControlArgumentError) as info:
        check(command, arguments, LIMITS)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigurationError)


def test_good_arguments_are_normalized() -> None:
    assert check("pool_grow", {}, LIMITS) == {"n": 1}
    assert check("time_limit", {"task_name": "t", "soft": 0, "hard": 5}, LIMITS) == {
        "task_name": "t",
        "soft": None,
        "hard": 5.0,
    }
    rate = check("rate_limit", {"task_name": "t", "rate_limit": "2/h"}, LIMITS)
    assert rate["per_second"] == pytest.approx(2 / 3600)
    assert check("rate_limit", {"task_name": "t", "rate_limit": 0}, LIMITS)["rate_limit"] is None
    assert check("rate_limit", {"task_name": "t", "rate_limit": 5}, LIMITS)["per_second"] == 5.0
    revoke = check("revoke", {"ids": "abc", "terminate": True, "signal": "kill"}, LIMITS)
    assert revoke == {"ids": ["abc"], "terminate": True, "signal": "SIGKILL"}
    assert check("revoke", {"ids": ["a"], "signal": 9}, LIMITS)["signal"] == "SIGKILL"
    # A worker started on a reserved queue (-Q) may still drop it.
    assert check("cancel_consumer", {"queue": "jobs.dlq"}, LIMITS) == {"queue": "jobs.dlq"}
    assert check("ping", {"whatever": 1}, LIMITS) == {}


@pytest.mark.parametrize(
    "name",
    ["q.dlq", "Q.DLQ", "q-dlq", "q.delay.00", "q.delay.25", "q-delay", "polyq.control", "amq.x"],
)
def test_reserved_queue_names(name: str) -> None:
    assert reserved_queue(name)


@pytest.mark.parametrize("name", ["celery", "jobs.fifo", "delayed", "q.delayed", "dlq-reader"])
def test_ordinary_queue_names(name: str) -> None:
    assert reserved_queue(name) is None


def test_envelope() -> None:
    assert check_envelope({"destination": "w1@h", "reply_to": "polyq.reply.abc"}) == {
        "destination": ["w1@h"],
        "reply_to": "polyq.reply.abc",
    }
    for bad in (
        {"reply_to": "polyq.events"},
        {"reply_to": "polyq.control"},
        {"destination": [3]},
        {"destination": []},
        {"ticket": ["x"]},
    ):
        with pytest.raises(ControlArgumentError):
            check_envelope(bad)


def test_limits_from_settings() -> None:
    conf = Settings({})
    assert Limits.from_settings(conf) == Limits(None, 1.0, 3600.0)
    assert Limits(None).ceiling() >= 16
    conf.worker_remote_control_max_concurrency = 0
    with pytest.raises(ConfigurationError, match="worker_remote_control_max_concurrency=0"):
        Limits.from_settings(conf)
    conf.worker_remote_control_max_concurrency = None
    conf.worker_remote_control_min_time_limit = -1
    with pytest.raises(ConfigurationError, match="worker_remote_control_min_time_limit"):
        Limits.from_settings(conf)


# -- queues on trial ----------------------------------------------------------------------


class RefusingTransport:
    """Refuses any receive that names a queue in ``refused``; else returns nothing."""

    def __init__(self, refused: set[str], down: bool = False) -> None:
        self.refused = refused
        self.down = down
        self.calls: list[list[str]] = []

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        self.calls.append(list(queues))
        if self.down or self.refused & set(queues):
            raise BrokerError("PRECONDITION_FAILED")
        return []


class FakeWorker:
    def __init__(self, transport: RefusingTransport, queues: list[str]) -> None:
        self.transport = transport
        self.queues = queues


def test_a_refused_queue_on_trial_is_dropped_and_the_others_received() -> None:
    worker = FakeWorker(RefusingTransport({"bad"}), ["a", "b"])
    trials = QueueTrials(worker)  # type: ignore[arg-type]
    trial = trials.start("bad")
    worker.queues = [*worker.queues, "bad"]
    assert trials.receive(worker.queues, 4, 0.1) == []
    assert worker.queues == ["a", "b"]
    assert trial.done.is_set() and "PRECONDITION_FAILED" in (trial.error or "")
    assert worker.transport.calls == [["a", "b", "bad"], ["a", "b"]]


def test_an_accepted_queue_on_trial_is_confirmed() -> None:
    worker = FakeWorker(RefusingTransport(set()), ["a"])
    trials = QueueTrials(worker)  # type: ignore[arg-type]
    trial = trials.start("new")
    worker.queues = ["a", "new"]
    trials.receive(worker.queues, 4, 0.1)
    assert trial.done.is_set() and trial.error is None and worker.queues == ["a", "new"]


def test_a_broker_down_keeps_the_trial_going() -> None:
    worker = FakeWorker(RefusingTransport(set(), down=True), ["a", "new"])
    trials = QueueTrials(worker)  # type: ignore[arg-type]
    trial = trials.start("new")
    with pytest.raises(BrokerError):
        trials.receive(worker.queues, 4, 0.1)
    assert not trial.done.is_set() and worker.queues == ["a", "new"]
    trials.forget("new")
    assert trial.done.is_set()


def test_trials_are_thread_safe_to_start() -> None:
    worker = FakeWorker(RefusingTransport(set()), ["a"])
    trials = QueueTrials(worker)  # type: ignore[arg-type]
    started = []
    threads = [threading.Thread(target=lambda: started.append(trials.start("q"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(t) for t in started}) == 1
