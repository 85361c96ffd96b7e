"""The result-backend conformance suite on every built-in result store
(``matrix.BROKERS``), each in a namespace, table prefix, table or file of its own."""

from __future__ import annotations

from polyq.testing.conformance import BackendSuite
from tests.conformance.matrix import OnBackends


class TestBackendSuite(OnBackends, BackendSuite):
    pass
