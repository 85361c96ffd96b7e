"""Canvas in eager mode (``task_always_eager``) and signature building: no worker."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from polyq import Polyq, chain, chord, chunks, group, signature, xmap, xstarmap
from polyq.canvas import Signature, from_dict, maybe_signature
from polyq.exceptions import ChordError


@pytest.fixture
def app() -> Any:
    app = Polyq("canvas-eager", broker="memory://", backend="memory://")
    app.conf.update(task_always_eager=True)
    calls: list[Any] = []

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="t.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="t.fail")
    def fail(*args: Any) -> None:
        raise ValueError("boom")

    @app.task(name="t.record")
    def record(*args: Any) -> None:
        calls.append(args)

    app.calls = calls  # type: ignore[attr-defined]
    return app


def test_signature_is_data(app: Any) -> None:
    add = app.tasks["t.add"]
    sig = add.s(2).set(queue="q", countdown=3)
    assert sig == {
        "task": "t.add",
        "args": [2],
        "kwargs": {},
        "options": {"queue": "q", "countdown": 3},
        "immutable": False,
        "subtask_type": None,
    }
    back = from_dict(json.loads(json.dumps(sig)), app)
    assert back == sig and back.name == "t.add"
    assert pickle.loads(pickle.dumps(sig)) == sig
    assert sig.clone((1,))["args"] == [1, 2]
    assert add.si(1, 1).clone((5,))["args"] == [1, 1]
    assert (
        signature("t.add", (1, 2), app=app)(  # calls the function here
        )
        == 3
    )
    assert maybe_signature(None) is None
    assert isinstance(maybe_signature(dict(sig), app), Signature)


def test_composites_round_trip_as_json(app: Any) -> None:
    add, tsum = app.tasks["t.add"], app.tasks["t.tsum"]
    flow = chain(add.s(1, 1), group(add.s(1), add.s(2)), chord([add.s(3)], tsum.s()))
    back = from_dict(json.loads(json.dumps(flow)), app)
    assert isinstance(back, chain)
    assert isinstance(back.tasks[1], group) and isinstance(back.tasks[2], chord)
    assert back.tasks[2].body.name == "t.tsum"
    assert repr(back) == repr(flow)


def test_chain_and_operator(app: Any) -> None:
    add, mul = app.tasks["t.add"], app.tasks["t.mul"]
    assert chain(add.s(2, 2) | mul.s(8))().get() == 32
    result = (add.s(2, 2) | mul.s(8) | add.s(1)).apply_async()
    assert result.get() == 33
    assert result.parent.get() == 32 and result.parent.parent.get() == 4


def test_chain_stops_at_failure(app: Any) -> None:
    add, fail = app.tasks["t.add"], app.tasks["t.fail"]
    result = chain(add.s(1, 1), fail.s(), add.s(5))()
    with pytest.raises(ValueError, match="boom"):
        result.get()


def test_group_and_chord(app: Any) -> None:
    add, tsum = app.tasks["t.add"], app.tasks["t.tsum"]
    res = group(add.s(i, i) for i in range(5))()
    assert res.get() == [0, 2, 4, 6, 8]
    assert res.ready() and res.successful() and res.completed_count() == 5
    assert chord([add.s(i, i) for i in range(10)])(tsum.s()).get() == 90
    assert chord([add.s(i, i) for i in range(10)], tsum.s())().get() == 90


def test_chord_failure_calls_errback(app: Any) -> None:
    add, tsum, fail, record = (app.tasks[n] for n in ("t.add", "t.tsum", "t.fail", "t.record"))
    body = tsum.s()
    body.link_error(record.s())
    result = chord([add.s(1, 1), fail.s()], body)()
    with pytest.raises(ChordError):
        result.get()
    assert len(app.calls) == 1


def test_nesting(app: Any) -> None:
    add, mul, tsum = app.tasks["t.add"], app.tasks["t.mul"], app.tasks["t.tsum"]
    # chain of groups: a group followed by a task is a chord
    assert chain(group(add.s(1, 1), add.s(2, 2)), tsum.s())().get() == 6
    # group of chains
    assert group(add.s(1, 1) | mul.s(10), add.s(2, 2) | mul.s(10))().get() == [20, 40]
    # chord inside a chain, and a chain as the chord's callback
    flow = add.s(1, 1) | chord([add.s(1), add.s(2)], tsum.s() | mul.s(10)) | add.s(1)
    assert flow().get() == ((2 + 1) + (2 + 2)) * 10 + 1


def test_map_starmap_chunks(app: Any) -> None:
    add = app.tasks["t.add"]
    tsum = app.tasks["t.tsum"]
    assert xmap(tsum.s(), [[1, 2], [3, 4]]).apply_async().get() == [3, 7]
    assert xstarmap(add.s(), [(1, 2), (3, 4)]).apply_async().get() == [3, 7]
    res = chunks(add.s(), [(i, i) for i in range(10)], 3)()
    assert res.get() == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


def test_links(app: Any) -> None:
    add, record, fail = app.tasks["t.add"], app.tasks["t.record"], app.tasks["t.fail"]
    add.apply_async((1, 2), link=record.s("ok"))
    fail.apply_async((), link_error=record.s("err"))
    assert app.calls[0] == (3, "ok")
    assert app.calls[1][1] == "err"
