"""Final states never go backwards (issue 16): ``store_state``, ``update_state`` and
``forget`` on the memory store, and ``ResultBackend.set_state``'s default (the one a
third-party plugin gets) through the whole backend conformance suite."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest

from polyq import Polyq, Task, states
from polyq.backend import ResultBackend
from polyq.result import store_state
from polyq.testing.conformance import BackendSuite
from polyq.testing.worker import start_worker
from polyq_backends.memory import MemoryResultBackend


def make_app(**conf: Any) -> Polyq:
    name = f"memory://{uuid.uuid4().hex}"
    return Polyq("t", broker=name, backend=name, **conf)


def test_stale_states_do_not_replace_a_final_state() -> None:
    app = make_app()
    assert store_state(app, "t-1", states.STARTED) is True
    assert store_state(app, "t-1", states.FAILURE, exc=RuntimeError("boom")) is True
    # The old code stored each of these over the failure: the late RETRY of a
    # duplicate execution left the task in RETRY for ever.
    for stale in (states.RETRY, states.STARTED, states.RECEIVED, states.PENDING, "PROGRESS"):
        assert store_state(app, "t-1", stale) is False
        assert app.AsyncResult("t-1").state == states.FAILURE


def test_first_final_state_wins() -> None:
    app = make_app()
    store_state(app, "t-1", states.FAILURE, exc=RuntimeError("boom"))
    assert store_state(app, "t-1", states.SUCCESS, 42) is False
    result = app.AsyncResult("t-1")
    assert result.state == states.FAILURE
    assert isinstance(result.info, RuntimeError)


def test_forget_lets_the_id_store_again() -> None:
    app = make_app()
    store_state(app, "t-1", states.SUCCESS, 1)
    app.AsyncResult("t-1").forget()
    assert app.AsyncResult("t-1").state == states.PENDING
    assert store_state(app, "t-1", states.STARTED) is True
    assert store_state(app, "t-1", states.SUCCESS, 2) is True
    assert app.AsyncResult("t-1").get(timeout=1) == 2


def test_update_state_before_and_after_the_final_state() -> None:
    app = make_app()

    @app.task(bind=True)
    def report(self: Task) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1})
        assert self.AsyncResult(self.request.id).state == "PROGRESS"
        return "done"

    with start_worker(app):
        result = report.delay()
        assert result.get(timeout=10) == "done"
    report.update_state(task_id=result.id, state="PROGRESS", meta={"done": 2})
    assert app.AsyncResult(result.id).state == states.SUCCESS
    assert app.AsyncResult(result.id).result == "done"


class _DefaultSetState(MemoryResultBackend):
    """A store that leaves ``set_state`` to the contract's default, as a
    third-party plugin written before it existed does."""

    set_state = ResultBackend.set_state


class TestDefaultSetState(BackendSuite):
    """The default ``set_state`` keeps every promise of the suite, races included."""

    race_rounds: ClassVar[int] = 50

    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"

    def make_backend(self, url: str, **options: Any) -> ResultBackend:
        return _DefaultSetState(url, **options)
