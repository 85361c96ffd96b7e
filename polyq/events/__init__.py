"""Task and worker events, broadcast on the broker for monitors.

- :mod:`polyq.events.dispatcher`: the event channel and names, sending (worker, clients);
- :mod:`polyq.events.receiver`: ``EventReceiver``, listening;
- :mod:`polyq.events.state`: ``State``, what the monitor folds events into.

What is sent and what it costs: docs/design/events.md.
"""

from polyq.events.dispatcher import (
    ARG_REPR_LIMIT,
    BATCH_EVENTS,
    EVENT_CHANNEL,
    HEARTBEAT_EXPIRY,
    HEARTBEAT_INTERVAL,
    MAX_BATCH_BYTES,
    EventDispatcher,
    decode_events,
    default_hostname,
    enable_sent_events,
    message_fields,
)
from polyq.events.receiver import EventReceiver
from polyq.events.state import RUNTIME_BUCKETS, TASK_STATES, State, TaskInfo, WorkerInfo

__all__ = [
    "ARG_REPR_LIMIT",
    "BATCH_EVENTS",
    "EVENT_CHANNEL",
    "HEARTBEAT_EXPIRY",
    "HEARTBEAT_INTERVAL",
    "MAX_BATCH_BYTES",
    "RUNTIME_BUCKETS",
    "TASK_STATES",
    "EventDispatcher",
    "EventReceiver",
    "State",
    "TaskInfo",
    "WorkerInfo",
    "decode_events",
    "default_hostname",
    "enable_sent_events",
    "message_fields",
]
