"""Shared test configuration.

The polyq pytest plugin (``polyq.testing.pytest_plugin``) is loaded for every run by
``addopts`` in ``pyproject.toml``; broker URLs come from :mod:`polyq.testing.services`
(environment variables ``POLYQ_TEST_<BROKER>_URL``, else a local server, else a skip
that the end-of-session summary lists).
"""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def memory_url() -> str:
    """A ``memory://`` URL naming a broker (and result store) private to the test."""
    return f"memory://test-{uuid.uuid4().hex[:12]}"
