"""The conformance suites on memory://, the reference plugins: every capability is
declared, so nothing may skip except what no in-process broker can have (a size
limit, a closed port)."""

import uuid

import pytest

from polyq.testing.conformance import BackendSuite, TransportSuite


class TestMemoryTransport(TransportSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex[:8]}"


class TestMemoryBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex[:8]}"
