"""The result-backend conformance suite: every promise of :mod:`polyq.backend`, as tests.

Subclass :class:`BackendSuite` and give it a ``backend_url`` fixture::

    class TestMyBackend(BackendSuite):
        @pytest.fixture(scope="class")
        def backend_url(self) -> str:
            return "mystore://127.0.0.1:9999"

Each test writes under its own unique key prefix and deletes what it wrote, so the
suite can run against a shared store. Hooks: :meth:`~BackendSuite.make_backend`
(to test a class that is not registered) and :meth:`~BackendSuite.backend_options`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from polyq.backend import BackendCapabilities, ResultBackend, final_mark
from polyq.registry import create_backend

__all__ = ["BackendSuite", "FinalStateSuite"]


def _in_threads(count: int, work: Callable[[int], Any], timeout: float = 60) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released together; their results in order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread ran over {timeout} s"
    assert not errors, f"a thread raised: {errors[0]!r}"
    return results


# -- final states never go backwards (ResultBackend.set_state) -------------------------

#: Non-final states a stale or duplicate execution may write late.
_STALE = (b"RETRY", b"STARTED", b"RECEIVED", b"PENDING", b"PROGRESS")


class FinalStateSuite:
    """``set_state``: once a final state is stored, no later write replaces it.

    Part of :class:`BackendSuite` (it uses its ``connect``, ``backend`` and ``prefix``
    fixtures); kept apart because it is one promise with its own race tests."""

    #: Given by :class:`BackendSuite`.
    short_ttl: ClassVar[float]
    slack: ClassVar[float]
    #: Rounds of the race tests (each a fresh key and a fresh set of threads).
    race_rounds: ClassVar[int] = 20
    #: Stale writes each racing thread makes per round.
    stale_writes: ClassVar[int] = 5

    def test_final_state_is_not_replaced_by_stale_states(
        self, backend: ResultBackend, prefix: str
    ) -> None:
        key = prefix + "task"
        assert backend.set_state(key, b"STARTED", final=False) is True
        assert backend.set_state(key, b"PROGRESS", final=False) is True, (
            "a custom state before the final one must be stored"
        )
        assert backend.get(key) == b"PROGRESS"
        assert backend.set_state(key, b"FAILURE", final=True) is True
        for stale in _STALE:
            assert backend.set_state(key, stale, final=False) is False, (
                f"set_state stored {stale!r} over a final state"
            )
            assert backend.get(key) == b"FAILURE", f"{stale!r} replaced the final state"

    def test_first_final_state_wins(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "task"
        assert backend.set_state(key, b"FAILURE", final=True) is True
        assert backend.set_state(key, b"SUCCESS", final=True) is False
        assert backend.get(key) == b"FAILURE", "a second final state replaced the first"

    def test_set_state_wakes_wait(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "task"
        timer = threading.Timer(0.2, backend.set_state, (key, b"SUCCESS"), {"final": True})
        timer.start()
        try:
            assert backend.wait(key, 5.0 + self.slack) == b"SUCCESS"
        finally:
            timer.join()

    def test_deleting_state_and_mark_frees_the_key(
        self, backend: ResultBackend, prefix: str
    ) -> None:
        key = prefix + "task"
        backend.set_state(key, b"SUCCESS", final=True)
        backend.delete([key, final_mark(key)])  # what AsyncResult.forget deletes
        assert backend.get(key) is None
        assert backend.set_state(key, b"STARTED", final=False) is True
        assert backend.set_state(key, b"FAILURE", final=True) is True
        assert backend.get(key) == b"FAILURE"

    def test_final_state_expires(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "task"
        backend.set_state(key, b"SUCCESS", self.short_ttl, final=True)
        assert backend.set_state(key, b"RETRY", self.short_ttl, final=False) is False
        time.sleep(self.short_ttl + 0.2)
        assert backend.get(key) is None
        assert backend.set_state(key, b"STARTED", final=False) is True, (
            "an expired final state still blocks writes"
        )
        assert backend.get(key) == b"STARTED"

    def test_final_state_wins_race_with_stale_states(
        self, connect: Callable[[], ResultBackend], prefix: str
    ) -> None:
        backends = [connect() for _ in range(2)]
        for round_ in range(self.race_rounds):
            key = f"{prefix}race-{round_}"
            backends[0].set_state(key, b"STARTED", final=False)

            def write(i: int, key: str = key) -> list[bool]:
                b = backends[i % 2]
                if i == 0:
                    return [b.set_state(key, b"FAILURE", final=True)]
                stale = _STALE[i % len(_STALE)]
                return [b.set_state(key, stale, final=False) for _ in range(self.stale_writes)]

            results = _in_threads(6, write)
            assert results[0] == [True], f"round {round_}: the only final write was refused"
            for b in backends:
                found = b.get(key)
                assert found == b"FAILURE", (
                    f"round {round_}: {found!r} replaced the final state in a race"
                )

    def test_racing_final_states_have_one_winner(
        self, connect: Callable[[], ResultBackend], prefix: str
    ) -> None:
        backends = [connect() for _ in range(2)]
        for round_ in range(max(1, self.race_rounds // 4)):
            key = f"{prefix}finals-{round_}"

            def write(i: int, key: str = key) -> bool:
                return backends[i % 2].set_state(key, f"FINAL-{i}".encode(), final=True)

            wins = _in_threads(6, write)
            assert wins.count(True) == 1, f"{wins.count(True)} of 6 racing final writes won"
            assert backends[0].get(key) == f"FINAL-{wins.index(True)}".encode(), (
                "the stored final state is not the winner's"
            )


class BackendSuite(FinalStateSuite):
    """Conformance tests for a result backend plugin; subclass it with a ``backend_url`` fixture."""

    #: A ttl short enough to wait out, long enough to read before it passes.
    short_ttl: ClassVar[float] = 0.5
    #: How late a ``wait`` may wake after the value is set.
    slack: ClassVar[float] = 1.0

    # -- hooks ---------------------------------------------------------------------

    def make_backend(self, url: str, **options: Any) -> ResultBackend:
        """Build the backend under test (default: through the plugin registry)."""
        return create_backend(url, **options)

    def backend_options(self) -> dict[str, Any]:
        """Options given to every backend the suite builds."""
        return {}

    # -- fixtures ------------------------------------------------------------------

    @pytest.fixture
    def connect(self, backend_url: str) -> Iterator[Callable[[], ResultBackend]]:
        """A factory of backends for ``backend_url``, all closed after the test."""
        opened: list[ResultBackend] = []

        def connect() -> ResultBackend:
            b = self.make_backend(backend_url, **self.backend_options())
            opened.append(b)
            return b

        yield connect
        for b in opened:
            with contextlib.suppress(Exception):
                b.close()

    @pytest.fixture
    def backend(self, connect: Callable[[], ResultBackend]) -> ResultBackend:
        """A backend for the test."""
        return connect()

    @pytest.fixture
    def prefix(self, connect: Callable[[], ResultBackend]) -> Iterator[str]:
        """A unique key prefix; every key under it is deleted after the test."""
        prefix = f"pqconf-{uuid.uuid4().hex[:12]}:"
        yield prefix
        with contextlib.suppress(Exception):
            cleaner = connect()
            cleaner.delete(cleaner.keys(prefix))

    # -- key-value -------------------------------------------------------------------

    def test_capabilities_are_declared(self, backend: ResultBackend) -> None:
        assert isinstance(backend.capabilities, BackendCapabilities)
        assert type(backend).capabilities is not ResultBackend.capabilities, (
            f"{type(backend).__name__} does not declare its capabilities: the defaults "
            "claim nothing (polling wait, not durable)"
        )

    def test_set_get_overwrite_delete(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "a"
        assert backend.get(key) is None, "a missing key must read as None"
        backend.set(key, b"first")
        assert backend.get(key) == b"first"
        backend.set(key, b"second")
        assert backend.get(key) == b"second", "set must replace the value"
        backend.delete([key])
        assert backend.get(key) is None
        backend.delete([key, prefix + "never-set"])  # absent keys are fine

    def test_values_are_byte_exact(self, backend: ResultBackend, prefix: str) -> None:
        values = {
            prefix + "binary": bytes(range(256)) * 4,
            prefix + "empty": b"",
            prefix + "large": bytes(range(256)) * 400,
            prefix + "utf8": "héllo ✓ 日本語 🚀".encode(),
        }
        for key, value in values.items():
            backend.set(key, value)
        for key, value in values.items():
            got = backend.get(key)
            assert got == value, f"{key!r} came back altered ({len(got or b'')} bytes)"
            assert isinstance(got, bytes)

    def test_values_are_shared_between_instances(
        self, connect: Callable[[], ResultBackend], prefix: str
    ) -> None:
        writer, reader = connect(), connect()
        writer.set(prefix + "k", b"v")
        assert reader.get(prefix + "k") == b"v"

    def test_get_many_and_set_many(self, backend: ResultBackend, prefix: str) -> None:
        backend.set_many([(prefix + "a", b"1"), (prefix + "b", b"2")])
        backend.set_many([(prefix + "c", b"3")], ttl=60)
        backend.set(prefix + "gone", b"x", ttl=self.short_ttl)
        time.sleep(self.short_ttl + 0.2)
        found = backend.get_many([prefix + k for k in ("a", "b", "c", "missing", "gone")])
        assert found == {prefix + "a": b"1", prefix + "b": b"2", prefix + "c": b"3"}
        assert backend.get_many([]) == {}

    # -- expiry ----------------------------------------------------------------------

    def test_value_expires(self, backend: ResultBackend, prefix: str) -> None:
        backend.set(prefix + "k", b"v", ttl=self.short_ttl)
        backend.set(prefix + "kept", b"v", ttl=60)
        assert backend.get(prefix + "k") == b"v"
        time.sleep(self.short_ttl + 0.2)
        assert backend.get(prefix + "k") is None, "a value was read after its ttl passed"
        assert backend.get(prefix + "kept") == b"v"

    def test_overwrite_replaces_ttl(self, backend: ResultBackend, prefix: str) -> None:
        backend.set(prefix + "k", b"short", ttl=self.short_ttl)
        backend.set(prefix + "k", b"forever")
        time.sleep(self.short_ttl + 0.2)
        assert backend.get(prefix + "k") == b"forever", "set without ttl kept the old ttl"

    def test_cleanup_removes_expired(self, backend: ResultBackend, prefix: str) -> None:
        backend.set(prefix + "old", b"v", ttl=self.short_ttl)
        backend.set(prefix + "live", b"v")
        time.sleep(self.short_ttl + 0.2)
        removed = backend.cleanup()
        assert isinstance(removed, int)
        assert removed >= 0
        assert backend.get(prefix + "old") is None
        assert backend.get(prefix + "live") == b"v"
        assert backend.keys(prefix) == [prefix + "live"]

    def test_create_schema_is_idempotent(self, backend: ResultBackend, prefix: str) -> None:
        # Optional (the default does nothing); ``polyq db init`` runs it on a live store.
        backend.set(prefix + "k", b"v")
        backend.create_schema()
        backend.create_schema()
        assert backend.get(prefix + "k") == b"v", "create_schema() on a store in use lost a value"

    # -- keys ------------------------------------------------------------------------

    def test_keys_lists_live_keys_by_prefix(self, backend: ResultBackend, prefix: str) -> None:
        for name in ("revoked:1", "revoked:2", "revoked:3"):
            backend.set(prefix + name, b"1")
        backend.set(prefix + "revoked:expired", b"1", ttl=self.short_ttl)
        backend.set(prefix + "other:1", b"1")
        time.sleep(self.short_ttl + 0.2)
        assert sorted(backend.keys(prefix + "revoked:")) == [
            prefix + "revoked:1",
            prefix + "revoked:2",
            prefix + "revoked:3",
        ]
        assert len(backend.keys(prefix + "revoked:", limit=2)) <= 2

    # -- wait ------------------------------------------------------------------------

    def test_wait_wakes_soon_after_set(
        self, connect: Callable[[], ResultBackend], prefix: str
    ) -> None:
        waiter, writer = connect(), connect()
        timer = threading.Timer(0.3, writer.set, [prefix + "k", b"done"])
        start = time.monotonic()
        timer.start()
        try:
            value = waiter.wait(prefix + "k", 10.0)
        finally:
            timer.join()
        elapsed = time.monotonic() - start
        assert value == b"done"
        assert elapsed <= 0.3 + self.slack, f"wait woke {elapsed - 0.3:.2f}s after the set"

    def test_wait_returns_present_value_at_once(self, backend: ResultBackend, prefix: str) -> None:
        backend.set(prefix + "k", b"v")
        start = time.monotonic()
        assert backend.wait(prefix + "k", 10.0) == b"v"
        assert time.monotonic() - start < self.slack

    def test_wait_times_out_with_none(self, backend: ResultBackend, prefix: str) -> None:
        start = time.monotonic()
        assert backend.wait(prefix + "never", 0.5) is None
        elapsed = time.monotonic() - start
        assert 0.4 <= elapsed <= 0.5 + self.slack, f"wait(timeout=0.5) took {elapsed:.2f}s"

    # -- add_to_set ------------------------------------------------------------------

    def test_add_to_set_counts_distinct_members(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "chord"
        assert backend.add_to_set(key, "task-1") == 1
        assert backend.add_to_set(key, "task-2") == 2
        assert backend.add_to_set(key, "task-1") == 2, "re-adding a member grew the set"
        assert backend.add_to_set(key, "task-3", ttl=60) == 3

    def test_add_to_set_is_atomic(self, connect: Callable[[], ResultBackend], prefix: str) -> None:
        key = prefix + "chord"
        backends = [connect() for _ in range(2)]

        def add(i: int) -> list[int]:
            return [backends[i % 2].add_to_set(key, f"m{i}-{n}", ttl=60) for n in range(50)]

        sizes = _in_threads(8, add)
        every = sorted(size for sizes_of_one in sizes for size in sizes_of_one)
        assert every == list(range(1, 401)), "concurrent adds returned duplicate or lost sizes"
        assert backends[0].add_to_set(key, "m0-0") == 400

    def test_add_to_set_expires(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "chord"
        backend.add_to_set(key, "a", ttl=self.short_ttl)
        backend.add_to_set(key, "b", ttl=self.short_ttl)
        time.sleep(self.short_ttl + 0.2)
        assert backend.add_to_set(key, "c", ttl=60) == 1, "an expired set was still counted"

    def test_delete_removes_sets(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "chord"
        backend.add_to_set(key, "a")
        backend.add_to_set(key, "b")
        backend.delete([key])
        assert backend.add_to_set(key, "a") == 1

    # -- chords at the declared size ------------------------------------------------

    #: The chord size proven when the backend declares no limit (``max_chord_size=None``).
    chord_size: ClassVar[int] = 100_000
    #: Members added one by one in the ``add_to_set`` test when the backend declares no
    #: limit. On the SQL, Redis and memory stores an add costs the same whatever the
    #: set's size (an indexed insert and a stored counter); a PostgreSQL add waits for
    #: a commit (~10 ms on a shared disk), so 100,000 of them would take 15 minutes.
    #: A backend whose sets grow in cost (DynamoDB: one item) declares a limit, and
    #: the test adds that many.
    add_to_set_size: ClassVar[int] = 10_000

    def members_to_count(self, backend: ResultBackend) -> int:
        """Hook: how many members the ``add_to_set`` test counts (default: the
        declared ``max_chord_size``, or ``add_to_set_size`` when unbounded). Lower it
        only for an emulator slower than the real store (say why)."""
        return self._chord_limit(backend, self.add_to_set_size)

    def _chord_limit(self, backend: ResultBackend, unbounded: int) -> int:
        limit = backend.capabilities.max_chord_size
        return unbounded if limit is None else min(limit, self.chord_size)

    def test_capabilities_declare_a_chord_limit(self, backend: ResultBackend) -> None:
        limit = backend.capabilities.max_chord_size
        assert limit is None or (isinstance(limit, int) and limit >= 1_000), (
            f"max_chord_size={limit!r}: declare None (no limit) or a size of at least 1,000"
        )

    @pytest.mark.slow
    def test_chord_results_read_and_deleted_at_the_declared_size(
        self, connect: Callable[[], ResultBackend], prefix: str
    ) -> None:
        """A chord's completion reads every member's result in one ``get_many`` and a
        cleanup deletes them in one ``delete``: at ``max_chord_size`` members (or
        ``chord_size`` when unbounded). A store with a limit on statement parameters
        (PostgreSQL: 65,535) must chunk."""
        writer, reader = connect(), connect()
        size = self._chord_limit(writer, self.chord_size)
        keys = [f"{prefix}meta-{uuid.UUID(int=i)}" for i in range(size)]
        for start in range(0, size, 10_000):
            writer.set_many([(k, k.encode()) for k in keys[start : start + 10_000]], ttl=600)
        found = reader.get_many([*keys, prefix + "never-set"])
        assert len(found) == size, f"get_many of {size:,} keys returned {len(found):,}"
        assert found[keys[0]] == keys[0].encode()
        assert found[keys[-1]] == keys[-1].encode()
        writer.delete(keys)
        assert reader.get_many(keys) == {}, f"delete of {size:,} keys left some"

    @pytest.mark.slow
    def test_chord_members_counted_at_the_declared_size(
        self, connect: Callable[[], ResultBackend], prefix: str
    ) -> None:
        """Every member of a chord of ``max_chord_size`` (or ``add_to_set_size`` when
        unbounded) counted exactly once in its set, by concurrent adders."""
        backends = [connect() for _ in range(4)]
        size = self.members_to_count(backends[0])
        key = prefix + "chord-members"
        members = [str(uuid.UUID(int=i)) for i in range(size)]
        step = -(-size // len(backends))

        def add(i: int) -> list[int]:
            mine = members[i * step : (i + 1) * step]
            return [backends[i].add_to_set(key, m, ttl=600) for m in mine]

        counts = sorted(c for part in _in_threads(len(backends), add, 900) for c in part)
        assert counts == list(range(1, size + 1)), "a member was lost or counted twice"
        assert backends[0].add_to_set(key, members[-1], ttl=600) == size
        backends[0].delete([key])
        assert backends[1].add_to_set(key, members[0]) == 1, "delete left the set's members"
        backends[1].delete([key])

    # -- set_if_absent ---------------------------------------------------------------

    def test_set_if_absent(self, backend: ResultBackend, prefix: str) -> None:
        key = prefix + "lock"
        assert backend.set_if_absent(key, b"first") is True
        assert backend.set_if_absent(key, b"second") is False
        assert backend.get(key) == b"first"

    def test_set_if_absent_has_one_winner(
        self, connect: Callable[[], ResultBackend], prefix: str
    ) -> None:
        key = prefix + "lock"
        backends = [connect() for _ in range(2)]

        def claim(i: int) -> bool:
            return backends[i % 2].set_if_absent(key, f"owner-{i}".encode(), ttl=self.short_ttl)

        wins = _in_threads(8, claim)
        assert wins.count(True) == 1, f"{wins.count(True)} of 8 concurrent callers won"
        winner = wins.index(True)
        assert backends[0].get(key) == f"owner-{winner}".encode()
        time.sleep(self.short_ttl + 0.2)
        wins = _in_threads(8, claim)
        assert wins.count(True) == 1, (
            f"after expiry, {wins.count(True)} of 8 concurrent callers won (expected one)"
        )

    # -- lifecycle -------------------------------------------------------------------

    def test_close_is_idempotent(self, connect: Callable[[], ResultBackend]) -> None:
        b = connect()
        b.close()
        b.close()
