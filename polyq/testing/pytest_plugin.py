"""The polyq pytest plugin: command-line options for the conformance suite and a
summary of the brokers whose tests were skipped (gathered from pytest-xdist's
workers too).

Enable it with ``-p polyq.testing.pytest_plugin`` (polyq's own test suite does so
in ``pyproject.toml``). It adds:

``--polyq-transport-url URL`` / ``POLYQ_TEST_TRANSPORT_URL``
    the transport the packaged conformance tests run against;
``--polyq-backend-url URL`` / ``POLYQ_TEST_BACKEND_URL``
    the result backend they run against;

and the session fixtures :func:`polyq_transport_url` and :func:`polyq_backend_url`
that return them (skipping when neither the option nor the variable is given).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from polyq.app import Polyq
from polyq.testing import services
from polyq.testing.worker import start_worker
from polyq.url import redact
from polyq.worker import Worker

# -- options -------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the polyq options."""
    group = parser.getgroup("polyq", "polyq conformance suite")
    group.addoption(
        "--polyq-transport-url",
        default=None,
        metavar="URL",
        help="transport URL the packaged conformance suite runs against "
        "(default: $POLYQ_TEST_TRANSPORT_URL)",
    )
    group.addoption(
        "--polyq-backend-url",
        default=None,
        metavar="URL",
        help="result backend URL the packaged conformance suite runs against "
        "(default: $POLYQ_TEST_BACKEND_URL)",
    )


def configured_url(config: pytest.Config | None, kind: str) -> str | None:
    """The ``kind`` (``"transport"`` or ``"backend"``) URL from the command line or
    the environment, or ``None``. Works without this plugin loaded (``config`` None
    or lacking the option): the environment variable is then the only source."""
    value = None
    if config is not None:
        try:
            value = config.getoption(f"--polyq-{kind}-url")
        except ValueError:
            value = None
    return value or os.environ.get(f"POLYQ_TEST_{kind.upper()}_URL") or None


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def polyq_transport_url(pytestconfig: pytest.Config) -> str:
    """The transport URL given by ``--polyq-transport-url`` or ``POLYQ_TEST_TRANSPORT_URL``."""
    url = configured_url(pytestconfig, "transport")
    if not url:
        pytest.skip("no transport URL: pass --polyq-transport-url or set POLYQ_TEST_TRANSPORT_URL")
    return url


@pytest.fixture(scope="session")
def polyq_backend_url(pytestconfig: pytest.Config) -> str:
    """The result backend URL given by ``--polyq-backend-url`` or ``POLYQ_TEST_BACKEND_URL``."""
    url = configured_url(pytestconfig, "backend")
    if not url:
        pytest.skip("no backend URL: pass --polyq-backend-url or set POLYQ_TEST_BACKEND_URL")
    return url


@pytest.fixture
def polyq_config() -> dict[str, Any]:
    """Settings for :func:`polyq_app`; override this fixture to change them."""
    return {"broker_url": "memory://", "result_backend": "memory://"}


@pytest.fixture
def polyq_app(polyq_config: dict[str, Any]) -> Iterator[Polyq]:
    """A fresh app configured by :func:`polyq_config` (in-memory broker and results
    by default), closed after the test. Define tasks on it inside the test."""
    app = Polyq("polyq-test", **polyq_config)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def polyq_worker(polyq_app: Polyq) -> Iterator[Worker]:
    """A real worker for :func:`polyq_app`, running in a thread of the test process
    (threads pool): tasks sent with ``.delay()`` run and their results can be read."""
    with start_worker(polyq_app, pool="threads", concurrency=2) as worker:
        yield worker


# -- reporting -----------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist, hand this worker's skipped brokers to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["polyq_skipped"] = dict(services.SKIPPED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Under pytest-xdist, gather the skipped brokers of a worker that finished."""
    services.SKIPPED.update(getattr(node, "workeroutput", {}).get("polyq_skipped", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which brokers were not tested, and why, so a green run is not misread."""
    if not services.SKIPPED:
        return
    terminalreporter.section("polyq: brokers skipped")
    for _broker, reason in sorted(services.SKIPPED.items()):
        terminalreporter.write_line(redact(reason))  # each reason starts with the broker
