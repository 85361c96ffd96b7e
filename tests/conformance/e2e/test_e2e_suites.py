"""End to end through worker processes on every broker x result-backend pair that
``matrix.PAIRS`` lists for the smoke and crash suites."""

from __future__ import annotations

import pytest

from polyq.testing.conformance import CrashSuite, SmokeSuite
from tests.conformance.matrix import CRASH, SMOKE, on_pairs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class TestSmokeSuite(on_pairs(SMOKE), SmokeSuite):
    pass


class TestCrashSuite(on_pairs(CRASH), CrashSuite):
    pass
