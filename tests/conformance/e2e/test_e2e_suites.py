"""End to end through worker processes on every broker x result-backend pair that
``matrix.PAIRS`` lists for the smoke, crash and retry-storm suites."""

from __future__ import annotations

import pytest

from polyq.testing.conformance import CrashSuite, RetryStormSuite, SmokeSuite
from tests.conformance.matrix import CRASH, RETRY_STORM, SMOKE, on_pairs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class TestSmokeSuite(on_pairs(SMOKE), SmokeSuite):
    pass


class TestCrashSuite(on_pairs(CRASH), CrashSuite):
    pass


class TestRetryStormSuite(on_pairs(RETRY_STORM), RetryStormSuite):
    pass
