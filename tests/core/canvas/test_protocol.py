"""The canvas protocol step by step: messages taken off an in-memory broker and run
through the worker's own execution path in a chosen order, so every interleaving
(out of order, redelivered, published twice) is deterministic."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from polyq import Polyq, chain, chord, group, states
from polyq.canvas import (
    CHORD_FIRED_PREFIX,
    CHORD_MEMBERS_PREFIX,
    claim_once,
)
from polyq.exceptions import ChordError
from polyq.execution import Outcome, execute
from polyq.message import TaskMessage, decode


@pytest.fixture
def app() -> Any:
    name = uuid.uuid4().hex
    app = Polyq("canvas-protocol", broker=f"memory://{name}", backend=f"memory://{name}")
    runs: list[tuple[str, Any]] = []

    @app.task(name="p.add")
    def add(x: int, y: int) -> int:
        runs.append(("add", (x, y)))
        return x + y

    @app.task(name="p.mul")
    def mul(x: int, y: int) -> int:
        runs.append(("mul", (x, y)))
        return x * y

    @app.task(name="p.tsum")
    def tsum(values: list[int]) -> int:
        runs.append(("tsum", values))
        return sum(values)

    @app.task(name="p.fail")
    def fail(*args: Any) -> None:
        runs.append(("fail", args))
        raise ValueError("protocol boom")

    @app.task(name="p.errback")
    def errback(task_id: str) -> None:
        runs.append(("errback", task_id))

    app.runs = runs  # type: ignore[attr-defined]
    yield app
    app.close()


def drain(app: Any) -> list[TaskMessage]:
    """Every message now on the default queue, decoded (and acked)."""
    transport = app.transport
    found = []
    while True:
        deliveries = transport.receive([app.conf.task_default_queue], 100, 0.0)
        if not deliveries:
            return found
        transport.ack(deliveries)
        found.extend(decode(d, app.accept) for d in deliveries)


def run(app: Any, message: TaskMessage) -> Outcome:
    return execute(app, message, hostname="protocol-test")


def names(app: Any) -> list[str]:
    return [name for name, _ in app.runs]


def test_chain_travels_in_the_first_message(app: Any) -> None:
    add, mul = app.tasks["p.add"], app.tasks["p.mul"]
    result = (add.s(1, 1) | mul.s(10) | add.s(5)).apply_async()
    (first,) = drain(app)
    assert first.id == result.parent.parent.id
    steps = first.options["chain"]
    assert [s["options"]["task_id"] for s in steps] == [result.id, result.parent.id]
    run(app, first)
    (second,) = drain(app)
    assert second.id == result.parent.id
    assert second.args == [2, 10]
    assert second.options["once"] is True
    run(app, second)
    (third,) = drain(app)
    run(app, third)
    assert result.get(timeout=1) == 25
    assert drain(app) == []


def test_chain_failure_marks_the_rest(app: Any) -> None:
    add, fail = app.tasks["p.add"], app.tasks["p.fail"]
    result = chain(fail.s(), add.s(1), add.s(2)).apply_async()
    (first,) = drain(app)
    run(app, first)
    assert drain(app) == []
    assert result.state == states.FAILURE
    assert result.parent.state == states.FAILURE
    with pytest.raises(ValueError, match="protocol boom"):
        result.get(timeout=1)


def test_chord_fires_once_out_of_order_and_redelivered(app: Any) -> None:
    add, tsum = app.tasks["p.add"], app.tasks["p.tsum"]
    result = chord([add.s(i, i) for i in range(5)])(tsum.s())
    header = drain(app)
    assert len(header) == 5
    group_id = header[0].options["chord"]["id"]
    for message in reversed(header[1:]):
        run(app, message)
        assert drain(app) == []  # not complete yet
    run(app, header[0])
    (callback,) = drain(app)
    assert callback.id == result.id
    # A header delivered again after its result was stored: counted once, no second publish.
    run(app, header[2])
    assert drain(app) == []
    # The same, had the worker died after publishing but before marking it fired.
    app.backend.delete([CHORD_FIRED_PREFIX + group_id])
    run(app, header[3])
    (duplicate,) = drain(app)
    assert duplicate.id == callback.id
    assert duplicate.message_id != callback.message_id
    assert run(app, callback).state == states.SUCCESS
    assert run(app, duplicate).state is None  # claimed by the first copy: skipped
    assert run(app, callback).state == states.SUCCESS  # a redelivery of the winner runs
    assert names(app).count("tsum") == 2
    assert result.get(timeout=1) == 20


def test_chord_completed_by_a_dead_worker_fires_on_redelivery(app: Any) -> None:
    add, tsum = app.tasks["p.add"], app.tasks["p.tsum"]
    result = chord([add.s(1, 1), add.s(2, 2)])(tsum.s())
    first, second = drain(app)
    run(app, first)
    # The second member's worker stored its result, counted it, then died.
    from polyq.execution import store_state

    store_state(app, second.id, states.SUCCESS, 4)
    group_id = second.options["chord"]["id"]
    app.backend.add_to_set(CHORD_MEMBERS_PREFIX + group_id, second.id)
    assert drain(app) == []
    run(app, second)  # its message comes back
    (callback,) = drain(app)
    run(app, callback)
    assert result.get(timeout=1) == 6


def test_chord_header_failure(app: Any) -> None:
    add, tsum, fail, errback = (app.tasks[n] for n in ("p.add", "p.tsum", "p.fail", "p.errback"))
    body = tsum.s()
    body.link_error(errback.s())
    result = chord([add.s(1, 1), fail.s(), fail.s()], body)()
    first, bad1, bad2 = drain(app)
    run(app, bad1)
    with pytest.raises(ChordError, match="protocol boom"):
        result.get(timeout=1)
    (eb1,) = drain(app)
    run(app, bad2)
    (eb2,) = drain(app)
    assert eb1.id == eb2.id  # deterministic: the second copy is dropped when it runs
    run(app, first)
    assert drain(app) == []  # the set never completes; nothing fires
    run(app, eb1)
    run(app, eb2)
    assert names(app).count("errback") == 1
    assert app.runs[-1] == ("errback", result.id)
    assert "tsum" not in names(app)


def test_chains_in_a_chord_header_count_their_last_task(app: Any) -> None:
    add, mul, tsum = app.tasks["p.add"], app.tasks["p.mul"], app.tasks["p.tsum"]
    result = chord([add.s(1, 1) | mul.s(3), add.s(2, 2)], tsum.s())()
    for _ in range(5):
        for message in drain(app):
            run(app, message)
    assert result.get(timeout=1) == 10
    assert names(app).count("tsum") == 1


def test_group_of_chains_and_chain_of_groups(app: Any) -> None:
    add, mul, tsum = app.tasks["p.add"], app.tasks["p.mul"], app.tasks["p.tsum"]
    res = group(add.s(1, 1) | mul.s(10), add.s(2, 2))()
    res2 = chain(group(add.s(1, 1), add.s(2, 2)), tsum.s(), mul.s(2))()
    for _ in range(6):
        for message in drain(app):
            run(app, message)
    assert res.get(timeout=1) == [20, 4]
    assert res2.get(timeout=1) == 12


def test_group_options_reach_members_without_overriding_theirs(app: Any) -> None:
    add = app.tasks["p.add"]
    group(add.s(1, 1), add.s(2, 2).set(priority=9)).set(priority=3).apply_async()
    messages = drain(app)
    assert sorted(m.priority for m in messages) == [3, 9]


def test_claim_once(app: Any) -> None:
    message = TaskMessage(task="p.add", id="claim-1", options={"once": True})
    assert claim_once(app, message)
    assert claim_once(app, message)  # the same message again (a redelivery)
    copy = TaskMessage(task="p.add", id="claim-1", options={"once": True})
    assert not claim_once(app, copy)  # another copy of the same task id
    retried = TaskMessage(task="p.add", id="claim-1", retries=1, options={"once": True})
    assert claim_once(app, retried)  # a retry() of the winner


def test_header_killed_by_the_worker_fails_the_chord(app: Any) -> None:
    # A header task whose process hit its hard time limit never runs its failure
    # path; the worker reports it (polyq.canvas.on_failure_outside_task).
    from polyq.canvas import on_failure_outside_task
    from polyq.exceptions import TimeLimitExceeded

    add, tsum = app.tasks["p.add"], app.tasks["p.tsum"]
    result = chain(add.s(1, 1), add.s(2)).apply_async()
    chord_result = chord([add.s(1, 1), add.s(2, 2)])(tsum.s())
    transport = app.transport
    deliveries = transport.receive([app.conf.task_default_queue], 10, 0.0)
    assert len(deliveries) == 3
    for delivery in deliveries:
        on_failure_outside_task(app, delivery, TimeLimitExceeded("hard time limit (1s)"))
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=1)
    with pytest.raises(ChordError, match="TimeLimitExceeded"):
        chord_result.get(timeout=1)
