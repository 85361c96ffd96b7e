"""The canvas suites through worker processes on the pairs ``matrix.PAIRS`` lists:
every broker runs the everyday set with a result store beside it, every result store
runs the stress set (1,000-member chord, barrier chords, crashes) behind SQLite."""

from __future__ import annotations

import pytest

from polyq.testing.conformance import CanvasStressSuite, CanvasSuite
from tests.conformance.matrix import CANVAS, CANVAS_STRESS, Pair, on_pairs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class TestCanvasSuite(on_pairs(CANVAS), CanvasSuite):
    pass


class TestCanvasStressSuite(on_pairs(CANVAS_STRESS), CanvasStressSuite):
    @pytest.fixture(autouse=True)
    def _store_speed(self, pair: Pair) -> None:
        # Bound to the test's own instance: a slow emulated store gets more time.
        if pair.backend.big_chord_timeout is not None:
            self.big_chord_timeout = pair.backend.big_chord_timeout
