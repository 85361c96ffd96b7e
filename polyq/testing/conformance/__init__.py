"""The conformance suites every plugin must pass.

Subclass them in a test module, giving the URL fixture::

    import pytest
    from polyq.testing.conformance import BackendSuite, TransportSuite

    class TestMyTransport(TransportSuite):
        @pytest.fixture(scope="class")
        def transport_url(self) -> str:
            return "mybroker://127.0.0.1:9999"

    class TestMyBackend(BackendSuite):
        @pytest.fixture(scope="class")
        def backend_url(self) -> str:
            return "mystore://127.0.0.1:9999"

or run the packaged copy against any URL, without writing a test::

    pytest -p polyq.testing.pytest_plugin --pyargs polyq.testing.conformance \\
        --polyq-transport-url 'mybroker://...' --polyq-backend-url 'mystore://...'
"""

from polyq.testing.conformance.backend import BackendSuite
from polyq.testing.conformance.canvas import CanvasStressSuite, CanvasSuite
from polyq.testing.conformance.e2e import CrashSuite, RetryStormSuite, SmokeSuite
from polyq.testing.conformance.transport import TransportSuite

__all__ = [
    "BackendSuite",
    "CanvasStressSuite",
    "CanvasSuite",
    "CrashSuite",
    "RetryStormSuite",
    "SmokeSuite",
    "TransportSuite",
]
