"""Prometheus ``/metrics`` of the dashboard.

A scrape reads only counters kept up to date as events arrive (per task name and
state, runtime histograms, per worker) and each queue's latest depth: never the
tasks kept nor any history, so its cost depends on how many task names, workers
and queues are kept (all bounded), not on how many events arrived.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from polyq.events import RUNTIME_BUCKETS

if TYPE_CHECKING:
    from polyq.monitor.web import Monitor

__all__ = ["MonitorCollector"]


class MonitorCollector(Collector):
    """Prometheus view of a :class:`~polyq.monitor.web.Monitor`, computed at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Any:
        """The metric families, from the monitor's counters."""
        state = self.monitor.state
        tasks = CounterMetricFamily(
            "polyq_tasks", "Task events seen, by task name and state", labels=["name", "state"]
        )
        runtime = HistogramMetricFamily(
            "polyq_task_runtime_seconds", "Task run time, by task name", labels=["name"]
        )
        with state.lock:
            counts = sorted(state.counts.items())
            histos = {n: (list(b), state.runtime_sum[n]) for n, b in state.runtime_buckets.items()}
            workers = [(w.hostname, w.alive, w.active, w.processed) for w in state.workers.values()]
            events = state.event_count
        for (name, task_state), count in counts:
            tasks.add_metric([name, task_state], count)
        yield tasks
        for name, (buckets, total) in sorted(histos.items()):
            pairs = [(str(b), buckets[i]) for i, b in enumerate(RUNTIME_BUCKETS)]
            pairs.append(("+Inf", buckets[-1]))
            runtime.add_metric([name], pairs, total)
        yield runtime
        depth = GaugeMetricFamily("polyq_queue_depth", "Messages in the queue", labels=["queue"])
        for queue, value in sorted(self.monitor.latest_depths().items()):
            depth.add_metric([queue], value)
        yield depth
        yield GaugeMetricFamily(
            "polyq_workers_online",
            "Workers heard from recently",
            value=sum(1 for w in workers if w[1]),
        )
        active = GaugeMetricFamily(
            "polyq_worker_active_tasks", "Tasks running on the worker", labels=["worker"]
        )
        processed = CounterMetricFamily(
            "polyq_worker_processed", "Tasks the worker finished", labels=["worker"]
        )
        for hostname, alive, running, done in workers:
            if alive:
                active.add_metric([hostname], running)
                processed.add_metric([hostname], done)
        yield active
        yield processed
        yield CounterMetricFamily("polyq_monitor_events", "Events received", value=events)
