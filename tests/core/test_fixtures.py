"""The pytest fixtures polyq ships for users' own test suites."""

from __future__ import annotations

import pytest

from polyq import Polyq, states


def test_polyq_worker_runs_tasks(polyq_app: Polyq, polyq_worker: object) -> None:
    @polyq_app.task
    def mul(x: int, y: int) -> int:
        return x * y

    assert mul.delay(6, 7).get(timeout=10) == 42


class TestEagerConfig:
    """Overriding ``polyq_config`` in a class (or module) changes the app."""

    @pytest.fixture
    def polyq_config(self) -> dict[str, object]:
        return {
            "broker_url": "memory://fixtures",
            "result_backend": "memory://fixtures",
            "task_always_eager": True,
            "task_eager_propagates": True,
        }

    def test_polyq_config_can_be_overridden(self, polyq_app: Polyq) -> None:
        @polyq_app.task
        def boom() -> None:
            raise ValueError("eager")

        with pytest.raises(ValueError, match="eager"):
            boom.delay()
        assert polyq_app.conf.task_always_eager is True


def test_worker_fixture_records_success(polyq_app: Polyq, polyq_worker: object) -> None:
    @polyq_app.task
    def hello(name: str) -> str:
        return f"hello {name}"

    result = hello.delay("polyq")
    assert result.get(timeout=10) == "hello polyq"
    assert result.state == states.SUCCESS
