"""Shared test configuration.

The polyq pytest plugin (``polyq.testing.pytest_plugin``) is loaded for every run by
``addopts`` in ``pyproject.toml``; broker URLs come from :mod:`polyq.testing.services`
(environment variables ``POLYQ_TEST_<BROKER>_URL``, else a local server, else a skip
that the end-of-session summary lists).

The layout says what a test needs:

- ``tests/conformance/``: the packaged conformance suites, run over the table of
  built-in plugins in ``tests/conformance/matrix.py`` (and the suites' self-test);
- ``tests/plugins/<plugin>/``: one plugin's own tests;
- ``tests/core/``: the core's tests, by area (``beat/``, ``canvas/``, ``monitor/``).

Every test is marked with the brokers it uses (``pytest -m redis``; the markers are
registered in ``pyproject.toml``): from its folder under ``tests/plugins/``, and from
its parameter ids (``[redis]``, ``[rabbitmq-redis]``). A test under ``tests/plugins/sql/``
names its database by a parameter or an explicit mark, or collection fails.

Under pytest-xdist (``-n``, see ``pyproject.toml``), the tests sharing class- or
module-scoped fixtures (worker processes, a browser) go to one xdist worker together:
a class, per broker or pair it is parametrized over, or a module using such a fixture;
any other test is a unit of its own. The long units are sent out first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The broker markers (each registered in pyproject.toml).
BROKERS = ("memory", "sqlite", "postgres", "mysql", "redis", "rabbitmq", "sqs", "dynamodb")

#: tests/plugins/<folder> → the brokers every test in it uses. The SQL plugin serves
#: three databases: each of its tests names its own.
PLUGIN_FOLDERS: dict[str, tuple[str, ...]] = {
    "memory": ("memory",),
    "redis": ("redis",),
    "rabbitmq": ("rabbitmq",),
    "sqs": ("sqs",),
    "dynamodb": ("dynamodb",),
    "sql": (),
}

#: The class-scoped parameters of the conformance classes (tests/conformance/matrix.py):
#: each value is a separate unit of work for xdist.
MATRIX_PARAMS = ("broker", "pair")

#: Units of work that run first under xdist, longest first, so that no long one is
#: left to run alone at the end (path prefixes, in order).
RUN_FIRST = (
    "tests/plugins/rabbitmq/test_restart.py",  # one test, ~40 s: a private node booted twice
    "tests/conformance/selftest/",  # one unit, ~30 s: the suite run 11 times at once
    "tests/conformance/canvas/",
    "tests/conformance/e2e/",
    "tests/core/monitor/",
)

TESTS = Path(__file__).parent


@pytest.fixture
def memory_url() -> str:
    """A ``memory://`` URL naming a broker (and result store) private to the test."""
    return f"memory://test-{uuid.uuid4().hex[:12]}"


def _parts(item: pytest.Item) -> tuple[str, ...]:
    """``item``'s path under tests/ as parts (empty for a test outside it)."""
    try:
        return Path(item.path).relative_to(TESTS).parts
    except ValueError:
        return ()


def brokers_of(item: pytest.Item) -> set[str]:
    """The brokers ``item`` uses: by its folder under tests/plugins, its parameter ids
    and its own marks."""
    found: set[str] = set()
    parts = _parts(item)
    if len(parts) > 2 and parts[0] == "plugins":
        found.update(PLUGIN_FOLDERS.get(parts[1], ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        found.update(part for part in callspec.id.split("-") if part in BROKERS)
    found.update(name for name in BROKERS if item.get_closest_marker(name))
    return found


def _shares_fixtures(item: pytest.Item) -> bool:
    """Whether ``item`` uses a fixture set up once for several tests (class, module or
    package scope), which splitting its tests over workers would set up again."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # pytest's internals moved: keep such tests together, to be safe
        return True
    return any(
        defs[-1].scope in ("class", "module", "package") for defs in info.name2fixturedefs.values()
    )


def _unit(item: pytest.Item) -> str | None:
    """The xdist unit of work of ``item``: its class (and matrix parameter), its module if
    it shares a fixture with other tests there, else None (a unit of its own).

    xdist appends it to the node id (``...::test_x[redis]@TestTransportSuite[redis]``),
    so it is kept short; two units of one name only run on the same worker."""
    cls = getattr(item, "cls", None)
    if cls is None:
        if not _shares_fixtures(item):
            return None
        parts = _parts(item)
        return "/".join(parts)[: -len(".py")] if parts else str(item.path)
    unit = cls.__name__
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in MATRIX_PARAMS:
        if name in params:
            unit += f"[{params[name].id}]"
    return unit


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    """Mark each test with its brokers (before ``-m`` selects) and its xdist unit; then
    put the long units first (after pytest has grouped the tests by parameter)."""
    xdist = config.pluginmanager.hasplugin("xdist")
    unmarked = []
    for item in items:
        brokers = brokers_of(item)
        for name in sorted(brokers):
            item.add_marker(name)
        if not brokers and _parts(item)[:1] == ("plugins",):
            unmarked.append(item.nodeid)
        unit = _unit(item)
        if xdist and unit is not None:
            item.add_marker(pytest.mark.xdist_group(unit))
    if unmarked:
        raise pytest.UsageError(
            "tests under tests/plugins/ must say which broker they use (a parameter id or a "
            f"mark such as @pytest.mark.postgres): {unmarked}"
        )
    yield
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(_unit(item) or item.nodeid, index)

    def rank(item: pytest.Item) -> tuple[int, int]:
        path = "/".join(("tests", *_parts(item)))
        early = [i for i, prefix in enumerate(RUN_FIRST) if path.startswith(prefix)]
        return (early[0] if early else len(RUN_FIRST), first_seen[_unit(item) or item.nodeid])

    items.sort(key=rank)  # stable: a unit's tests keep pytest's order
