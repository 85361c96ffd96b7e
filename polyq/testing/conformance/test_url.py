"""The conformance suites run against the URLs given on the command line.

This module is what ``pytest --pyargs polyq.testing.conformance`` collects::

    pytest -p polyq.testing.pytest_plugin --pyargs polyq.testing.conformance \\
        --polyq-transport-url 'mybroker://...' --polyq-backend-url 'mystore://...'

The URLs may also come from ``POLYQ_TEST_TRANSPORT_URL`` / ``POLYQ_TEST_BACKEND_URL``
(then ``-p polyq.testing.pytest_plugin`` is optional). A suite whose URL is not
given is skipped, saying which option to pass.
"""

from __future__ import annotations

import pytest

from polyq.testing.conformance.backend import BackendSuite
from polyq.testing.conformance.transport import TransportSuite
from polyq.testing.pytest_plugin import configured_url


class TestTransport(TransportSuite):
    """The transport suite on ``--polyq-transport-url``."""

    @pytest.fixture(scope="class")
    def transport_url(self, request: pytest.FixtureRequest) -> str:
        url = configured_url(request.config, "transport")
        if not url:
            pytest.skip(
                "no transport URL: pass --polyq-transport-url or set POLYQ_TEST_TRANSPORT_URL"
            )
        return url


class TestBackend(BackendSuite):
    """The result-backend suite on ``--polyq-backend-url``."""

    @pytest.fixture(scope="class")
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        url = configured_url(request.config, "backend")
        if not url:
            pytest.skip("no backend URL: pass --polyq-backend-url or set POLYQ_TEST_BACKEND_URL")
        return url
