"""OpenTelemetry: producer and consumer spans linked through message headers, on
several transports (memory, SQLite, Redis), with a worker thread in this process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="pip install 'polyq[otel]'")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from polyq import Polyq
from polyq.contrib.otel import PolyqInstrumentor
from polyq.testing.worker import start_worker
from tests.core.monitor.support import broker_for


@pytest.fixture(params=["memory", "sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://otel-{uuid.uuid4().hex[:8]}"
    return broker_for(request.param, tmp_path)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = PolyqInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield exporter
    instrumentor.uninstrument()


def test_trace_crosses_the_broker(url: str, spans: InMemorySpanExporter) -> None:
    app = Polyq("otel", broker=url, backend=url)

    @app.task(name="otel.child")
    def child(x: int) -> int:
        return x * 2

    @app.task(name="otel.parent")
    def parent(x: int) -> str:
        return child.delay(x).id

    @app.task(name="otel.fail")
    def fail() -> None:
        raise RuntimeError("nope")

    try:
        with start_worker(app, concurrency=2):
            child_id = parent.delay(21).get(timeout=15)
            assert app.AsyncResult(child_id).get(timeout=15) == 42
            failed = fail.delay()
            failed.get(timeout=15, propagate=False)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(spans.get_finished_spans()) < 6:
                time.sleep(0.05)
    finally:
        app.close()
    by_id: dict[str, list[Any]] = {}
    for span in spans.get_finished_spans():
        by_id.setdefault(span.attributes["messaging.message.id"], []).append(span)
    parent_send, parent_run = sorted(by_id[next(iter(by_id))], key=lambda s: s.kind.value)
    kinds = {s.kind for s in (parent_send, parent_run)}
    assert kinds == {SpanKind.PRODUCER, SpanKind.CONSUMER}
    send = next(s for s in (parent_send, parent_run) if s.kind == SpanKind.PRODUCER)
    run = next(s for s in (parent_send, parent_run) if s.kind == SpanKind.CONSUMER)
    assert send.name == "send celery" and run.name == "process celery"
    assert run.context.trace_id == send.context.trace_id
    assert run.parent is not None and run.parent.span_id == send.context.span_id
    assert run.attributes["messaging.system"] == "polyq"
    assert run.attributes["polyq.task.name"] == "otel.parent"
    assert run.attributes["polyq.task.state"] == "SUCCESS"
    # The child was sent while the parent ran: same trace, its send under the parent's run.
    child_send = next(s for s in by_id[child_id] if s.kind == SpanKind.PRODUCER)
    child_run = next(s for s in by_id[child_id] if s.kind == SpanKind.CONSUMER)
    assert child_send.context.trace_id == send.context.trace_id
    assert child_send.parent is not None and child_send.parent.span_id == run.context.span_id
    assert child_run.parent is not None and child_run.parent.span_id == child_send.context.span_id
    failed_run = next(s for s in by_id[failed.id] if s.kind == SpanKind.CONSUMER)
    assert failed_run.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in failed_run.events)
