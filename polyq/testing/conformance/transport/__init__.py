"""The transport conformance suite: every promise of :mod:`polyq.transport`, as tests.

Subclass :class:`TransportSuite` and give it a ``transport_url`` fixture::

    class TestMyTransport(TransportSuite):
        @pytest.fixture(scope="class")
        def transport_url(self) -> str:
            return "mybroker://127.0.0.1:9999"

Every test gets fresh transport instances and its own uniquely named queues
(deleted afterwards with ``delete_queue``), so the suite can run against a shared
broker. A test skips only when the transport's :class:`~polyq.transport.Capabilities`
declare the feature absent, and the skip reason names that capability.

Hooks a subclass may override: :meth:`~TransportSuite.make_transport` (to test a
class that is not registered under an entry point), :meth:`~TransportSuite.transport_options`
(extra options, e.g. credentials), :meth:`~TransportSuite.unreachable_url` (a URL for
the same broker on a closed port), and the timing attributes
:attr:`~TransportSuite.visibility_timeout` and :attr:`~TransportSuite.slack`.

The tests live in one module per topic (``basics``, ``leases``, ``delays``,
``priorities``, ``dead_letters``, ``broadcast``, ``concurrency``, ``failures``,
``optional``), on the hooks and fixtures of ``support``; a plugin author may
subclass a single topic's class (e.g. :class:`LeaseTests`) while working on it.
"""

from __future__ import annotations

from polyq.testing.conformance.transport.basics import BasicsTests
from polyq.testing.conformance.transport.broadcast import BroadcastTests
from polyq.testing.conformance.transport.concurrency import ConcurrencyTests
from polyq.testing.conformance.transport.dead_letters import DeadLetterTests
from polyq.testing.conformance.transport.delays import DelayTests
from polyq.testing.conformance.transport.failures import FailureTests
from polyq.testing.conformance.transport.leases import LeaseTests
from polyq.testing.conformance.transport.optional import OptionalMethodTests
from polyq.testing.conformance.transport.priorities import PriorityTests
from polyq.testing.conformance.transport.support import TransportSuiteBase

__all__ = [
    "BasicsTests",
    "BroadcastTests",
    "ConcurrencyTests",
    "DeadLetterTests",
    "DelayTests",
    "FailureTests",
    "LeaseTests",
    "OptionalMethodTests",
    "PriorityTests",
    "TransportSuite",
    "TransportSuiteBase",
]


class TransportSuite(
    BasicsTests,
    LeaseTests,
    DelayTests,
    PriorityTests,
    DeadLetterTests,
    BroadcastTests,
    ConcurrencyTests,
    FailureTests,
    OptionalMethodTests,
):
    """Conformance tests for a transport plugin; subclass it with a ``transport_url`` fixture."""
