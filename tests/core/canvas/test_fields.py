"""Workflow fields read from a message are checked before the task runs (issue 17,
canvas fields trusted): a message with ``chord.size = "lots"`` ran its body on
every delivery until dead-lettered; now the task fails once, naming the field,
its message is dead-lettered and the chord it names is failed."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from polyq import Polyq, chord, states
from polyq.backend import BackendCapabilities
from polyq.canvas.fields import MAX_CHORD_SIZE, check_options
from polyq.canvas.keys import CHORD_PREFIX
from polyq.exceptions import ChordError, InvalidWorkflow
from polyq.execution import execute
from polyq.message import TaskMessage, decode, encode
from polyq.result import decode_record, encode_record
from polyq.testing.worker import start_worker


@pytest.fixture
def app() -> Any:
    name = uuid.uuid4().hex
    app = Polyq("canvas-fields", broker=f"memory://{name}", backend=f"memory://{name}")
    runs: list[str] = []

    @app.task(name="f.add")
    def add(x: int, y: int) -> int:
        runs.append("add")
        return x + y

    @app.task(name="f.tsum")
    def tsum(values: list[int]) -> int:
        runs.append("tsum")
        return sum(values)

    app.runs = runs  # type: ignore[attr-defined]
    yield app
    app.close()


def _drain(app: Any) -> list[TaskMessage]:
    found = []
    while deliveries := app.transport.receive([app.conf.task_default_queue], 100, 0.0):
        app.transport.ack(deliveries)
        found.extend(decode(d, app.accept) for d in deliveries)
    return found


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"chord": {"id": "c1", "size": "lots"}}, "options.chord.size"),
        ({"chord": {"id": "c1", "size": 0}}, "options.chord.size"),
        ({"chord": {"id": "c1", "size": MAX_CHORD_SIZE + 1}}, "options.chord.size"),
        ({"chord": {"id": "c1", "size": True}}, "options.chord.size"),
        ({"chord": {"id": 7, "size": 2}}, "options.chord.id"),
        ({"chord": ["c1", 2]}, "options.chord"),
        ({"chain": "f.add"}, "options.chain"),
        ({"chain": [{"task": 3}]}, "options.chain[0].task"),
        ({"chain": [{"task": "f.add", "args": "xy"}]}, "options.chain[0].args"),
        ({"chain": [{"task": "f.add", "options": {"chord": {"id": "c", "size": -1}}}]}, "size"),
        ({"link": {"task": "f.add", "kwargs": [1]}}, "options.link.kwargs"),
        ({"link_error": [None]}, "options.link_error[0]"),
        ({"once": "yes"}, "options.once"),
    ],
)
def test_bad_fields_are_named(options: dict[str, Any], field: str) -> None:
    problems = check_options(options)
    assert len(problems) == 1
    assert field in next(iter(problems.values()))


def test_deeply_nested_signatures_are_refused() -> None:
    sig: dict[str, Any] = {"task": "f.add"}
    for _ in range(100):
        sig = {"task": "f.add", "options": {"link": sig}}
    assert "deeper than" in check_options({"link": sig})["link"]


def test_workflows_the_canvas_sends_pass(app: Any) -> None:
    add, tsum = app.tasks["f.add"], app.tasks["f.tsum"]
    chord([add.s(1, 1), (add.s(2, 2) | add.s(3))], tsum.s() | add.s(4)).apply_async()
    (add.s(1, 2) | chord([add.s(5), add.s(6)], tsum.s())).apply_async()
    for message in _drain(app):
        assert check_options(message.options) == {}


def test_chord_size_lots_fails_once_without_running_the_body(app: Any) -> None:
    add, tsum = app.tasks["f.add"], app.tasks["f.tsum"]
    result = chord([add.s(1, 1), add.s(2, 2)])(tsum.s())
    first, second = _drain(app)
    first.options["chord"]["size"] = "lots"  # a message altered on the broker
    outcome = execute(app, first, hostname="fields-test")
    assert outcome.action == "dead_letter"
    assert outcome.state == states.FAILURE
    assert "options.chord.size is 'lots'" in (outcome.reason or "")
    assert app.runs == []  # the task body did not run
    member = app.AsyncResult(first.id)
    assert member.state == states.FAILURE
    with pytest.raises(InvalidWorkflow, match=r"options\.chord\.size"):
        member.get(timeout=1)
    # The chord it named is failed at once, not left waiting.
    assert result.state == states.FAILURE
    with pytest.raises(ChordError):
        result.get(timeout=1)
    # The other member still runs and does not fire the body.
    assert execute(app, second, hostname="fields-test").state == states.SUCCESS
    assert _drain(app) == []


def test_a_bad_chord_record_fails_the_chord(app: Any) -> None:
    add, tsum = app.tasks["f.add"], app.tasks["f.tsum"]
    result = chord([add.s(1, 1)])(tsum.s())
    (member,) = _drain(app)
    group_id = member.options["chord"]["id"]
    key = CHORD_PREFIX + group_id
    record = decode_record(app.backend.get(key), app.accept)
    record["results"] = [5]  # altered in the result store
    app.backend.set(key, encode_record(record, "json"))
    execute(app, member, hostname="fields-test")
    assert _drain(app) == []  # no body sent
    assert "tsum" not in app.runs
    with pytest.raises(ChordError, match=r"results\[0\] is 5"):
        result.get(timeout=1)


def test_a_worker_runs_the_body_once_and_dead_letters_the_message(app: Any) -> None:
    add = app.tasks["f.add"]
    message = TaskMessage(
        task="f.add",
        id=str(uuid.uuid4()),
        args=[1, 2],
        options={"chord": {"id": str(uuid.uuid4()), "size": "lots"}},
        queue=app.conf.task_default_queue,
    )
    app.publish_raw([encode(message, "json", None)])
    with start_worker(app, pool="solo", concurrency=1):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not app.transport.dead_letters(
            app.conf.task_default_queue
        ):
            time.sleep(0.05)
        time.sleep(0.3)  # a redelivery, were there one, would come now
    letters = app.transport.dead_letters(app.conf.task_default_queue)
    assert len(letters) == 1
    assert "options.chord.size" in letters[0].reason
    assert app.runs == []
    assert add.AsyncResult(message.id).state == states.FAILURE


def test_a_chord_above_the_backends_limit_fails_at_send_time(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    add, tsum = app.tasks["f.add"], app.tasks["f.tsum"]
    limited = BackendCapabilities(push_wait=True, durable=False, max_chord_size=3)
    monkeypatch.setattr(type(app.backend), "capabilities", limited)
    with pytest.raises(ChordError, match=r"chord of 4 header tasks is above the 3"):
        chord([add.s(i, i) for i in range(4)])(tsum.s())
    assert _drain(app) == []  # nothing sent
    assert app.backend.keys("polyq-chord") == []  # nothing stored
    chord([add.s(i, i) for i in range(3)])(tsum.s())  # at the limit: sent
    assert len(_drain(app)) == 3
