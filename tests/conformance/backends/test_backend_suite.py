"""The result-backend conformance suite on every built-in result store
(``matrix.BROKERS``), each in a namespace, table prefix, table or file of its own."""

from __future__ import annotations

from polyq.backend import ResultBackend
from polyq.testing.conformance import BackendSuite
from tests.conformance.matrix import OnBackends


class TestBackendSuite(OnBackends, BackendSuite):
    def members_to_count(self, backend: ResultBackend) -> int:
        # moto rewrites the whole item on every UpdateItem, so adding the i-th member
        # of a set costs O(i) there (4,000 members: over 5 minutes on a shared CI
        # machine); real DynamoDB does not. 1,000 is the contract's minimum.
        if type(backend).__name__ == "DynamoDBResultBackend":
            return 1_000
        return super().members_to_count(backend)
