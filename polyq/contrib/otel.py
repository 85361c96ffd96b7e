"""OpenTelemetry tracing for polyq (``pip install 'polyq[otel]'``).

::

    from polyq.contrib.otel import PolyqInstrumentor
    PolyqInstrumentor().instrument()          # in the client and in the worker

What it records, following the OpenTelemetry messaging conventions:

- a **producer** span ``send <queue>`` around each publish (``apply_async``,
  ``delay``, ``send_task``, retries, canvas steps). Its context is injected
  into the message's headers with the configured propagator (W3C
  ``traceparent``/``tracestate`` by default). Headers are plain strings carried
  by every transport, so the context crosses all of them alike;
- a **consumer** span ``process <queue>`` around each task execution, a child
  of the producer's context extracted from those headers, and current while the
  task runs: tasks sent from inside a task continue the same trace. A failed
  task sets the span's status to error and records the exception.

Attributes: ``messaging.system`` (``polyq``), ``messaging.operation.type``
(``send``/``process``), ``messaging.operation.name``,
``messaging.destination.name`` (the queue), ``messaging.message.id`` (the task
id), and ``polyq.task.name``, ``polyq.task.retries``, ``polyq.task.state``.

How: it connects to polyq's signals (``before_task_publish`` and
``after_task_publish`` for the producer; ``task_prerun``, ``task_failure``,
``task_postrun`` for the consumer). Spans waiting for their closing signal are
kept per task id on the instrumentor (a publish that raises never sends
``after_task_publish``: its span is ended as an error after
``stale_after`` seconds). The instrumentor holds the only state; call
:meth:`PolyqInstrumentor.uninstrument` to disconnect.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from polyq import signals

__all__ = ["PolyqInstrumentor"]

SYSTEM = "polyq"
#: Received-but-not-started messages remembered for their trace context.
MAX_PENDING = 10000


class PolyqInstrumentor:
    """Connects polyq's signals to OpenTelemetry spans."""

    def __init__(self, stale_after: float = 300.0) -> None:
        self.stale_after = stale_after
        self._tracer: trace.Tracer | None = None
        self._lock = threading.Lock()
        # task id -> (span, started monotonic) for publishes in flight.
        self._producing: dict[str, tuple[trace.Span, float]] = {}
        # task id -> (span, context token) for tasks running in this process.
        self._consuming: dict[str, tuple[trace.Span, object]] = {}
        # task id -> (headers, queue) of messages received by a worker in this process.
        self._received: collections.OrderedDict[str, tuple[dict[str, str], str]] = (
            collections.OrderedDict()
        )

    def instrument(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        """Start tracing (idempotent)."""
        if self._tracer is not None:
            return
        self._tracer = trace.get_tracer("polyq", tracer_provider=tracer_provider)
        signals.before_task_publish.connect(self._before_publish)
        signals.after_task_publish.connect(self._after_publish)
        signals.task_received.connect(self._received_message)
        signals.task_prerun.connect(self._prerun)
        signals.task_failure.connect(self._failure)
        signals.task_postrun.connect(self._postrun)

    def uninstrument(self) -> None:
        """Stop tracing; spans still open are ended."""
        for signal, receiver in (
            (signals.before_task_publish, self._before_publish),
            (signals.after_task_publish, self._after_publish),
            (signals.task_received, self._received_message),
            (signals.task_prerun, self._prerun),
            (signals.task_failure, self._failure),
            (signals.task_postrun, self._postrun),
        ):
            signal.disconnect(receiver)
        with self._lock:
            open_spans = [s for s, _ in self._producing.values()]
            open_spans += [s for s, _ in self._consuming.values()]
            self._producing.clear()
            self._consuming.clear()
            self._received.clear()
        for span in open_spans:
            span.end()
        self._tracer = None

    # -- producer --------------------------------------------------------------------

    def _before_publish(
        self, sender: Any = None, headers: Any = None, routing_key: str = "", **_: Any
    ) -> None:
        if self._tracer is None or headers is None:
            return
        task_id = str(headers.get("id", ""))
        span = self._tracer.start_span(
            f"send {routing_key}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": routing_key,
                "messaging.message.id": task_id,
                "polyq.task.name": str(headers.get("task", sender)),
                "polyq.task.retries": int(headers.get("retries", 0) or 0),
            },
        )
        # The message's headers are the carrier: they travel with it on every transport.
        propagate.inject(headers, context=trace.set_span_in_context(span))
        now = time.monotonic()
        with self._lock:
            stale = [k for k, (_, at) in self._producing.items() if now - at > self.stale_after]
            ended = [self._producing.pop(k)[0] for k in stale]
            self._producing[task_id] = (span, now)
        for old in ended:
            old.set_status(Status(StatusCode.ERROR, "publish did not complete"))
            old.end()

    def _after_publish(self, headers: Any = None, **_: Any) -> None:
        if headers is None:
            return
        with self._lock:
            entry = self._producing.pop(str(headers.get("id", "")), None)
        if entry is not None:
            entry[0].end()

    # -- consumer --------------------------------------------------------------------

    def _received_message(self, request: Any = None, **_: Any) -> None:
        # The worker's main process sees the delivery; thread, solo and asyncio
        # pools run the task in that same process, before task.request is set.
        headers = getattr(request, "headers", None)
        if self._tracer is None or not headers or "id" not in headers:
            return
        with self._lock:
            self._received[headers["id"]] = (dict(headers), str(getattr(request, "queue", "")))
            while len(self._received) > MAX_PENDING:
                self._received.popitem(last=False)

    def _carrier(self, task_id: str, task: Any) -> tuple[dict[str, str], str]:
        """The message headers and queue of the task about to run."""
        with self._lock:
            found = self._received.pop(task_id, None)
        if found is not None:
            return found
        request = getattr(task, "request", None)
        if getattr(request, "id", None) == task_id:
            delivery = getattr(request, "delivery_info", None) or {}
            return dict(getattr(request, "headers", None) or {}), str(delivery.get("queue", ""))
        return {}, ""

    def _prerun(self, task_id: str = "", task: Any = None, **_: Any) -> None:
        if self._tracer is None or task is None:
            return
        headers, queue = self._carrier(task_id, task)
        parent = propagate.extract(headers)
        span = self._tracer.start_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": task_id,
                "polyq.task.name": str(getattr(task, "name", "")),
                "polyq.task.retries": int(headers.get("retries", 0) or 0),
            },
        )
        # Current while the task runs, so tasks it sends join this trace.
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        with self._lock:
            self._consuming[task_id] = (span, token)

    def _failure(self, task_id: str = "", exception: BaseException | None = None, **_: Any) -> None:
        with self._lock:
            entry = self._consuming.get(task_id)
        if entry is None:
            return
        span = entry[0]
        if exception is not None:
            span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, type(exception).__name__ if exception else ""))

    def _postrun(self, task_id: str = "", state: str | None = None, **_: Any) -> None:
        with self._lock:
            entry = self._consuming.pop(task_id, None)
        if entry is None:
            return
        span, token = entry
        if state:
            span.set_attribute("polyq.task.state", state)
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception:
            pass  # detached in another thread: the span still ends
        span.end()
