"""polyq.registry: plugins found by URL scheme through entry points."""

from importlib.metadata import EntryPoint

import pytest

from polyq import registry
from polyq.exceptions import UnknownScheme
from polyq.registry import BACKEND_GROUP, TRANSPORT_GROUP, create_backend, create_transport, resolve
from polyq_backends.memory import MemoryResultBackend
from polyq_transports.memory import MemoryTransport


def test_builtin_schemes_resolve_through_entry_points() -> None:
    assert resolve("memory://", TRANSPORT_GROUP) == (MemoryTransport, "memory://")
    assert resolve("memory://x", BACKEND_GROUP) == (MemoryResultBackend, "memory://x")
    assert "memory" in registry.installed_schemes(TRANSPORT_GROUP)
    assert "memory" in registry.installed_schemes(BACKEND_GROUP)


def test_scheme_is_case_insensitive() -> None:
    assert resolve("MEMORY://name", TRANSPORT_GROUP)[0] is MemoryTransport


def test_unknown_scheme_names_scheme_installed_plugins_and_fix() -> None:
    with pytest.raises(UnknownScheme) as info:
        create_transport("kafka://127.0.0.1:9092")
    message = str(info.value)
    assert "'kafka'" in message
    assert "memory" in message  # the installed schemes are listed
    assert "pip install" in message


def test_unknown_scheme_suggests_a_close_one() -> None:
    with pytest.raises(UnknownScheme, match="Did you mean memory://"):
        create_transport("memroy://")


def test_known_scheme_with_missing_client_gives_the_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = EntryPoint("redis", "polyq_no_such_client_module:Transport", TRANSPORT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda group: {"redis": missing})
    with pytest.raises(UnknownScheme) as info:
        create_transport("redis://127.0.0.1:6379/0")
    message = str(info.value)
    assert "redis://" in message
    assert 'pip install "polyq[redis]"' in message


def test_entry_point_that_is_not_a_plugin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = EntryPoint("memory", "polyq_backends.memory:MemoryResultBackend", TRANSPORT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda group: {"memory": wrong})
    with pytest.raises(TypeError, match="not a Transport subclass"):
        create_transport("memory://")


def test_driver_suffix_resolves_by_base_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_entry_points", _fake_entry_points)
    cls, url = resolve("memory+fast://name", TRANSPORT_GROUP)
    assert cls is MemoryTransport
    assert url == "memory+fast://name", "the driver suffix is the plugin's to read"


def test_celery_sqla_and_db_prefixes_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_entry_points", _fake_entry_points)
    assert resolve("sqla+memory://name", TRANSPORT_GROUP) == (MemoryTransport, "memory://name")
    assert resolve("db+memory://name", BACKEND_GROUP) == (MemoryResultBackend, "memory://name")
    assert resolve("db+memory+fast://n", BACKEND_GROUP) == (MemoryResultBackend, "memory+fast://n")


def test_celery_rpc_backend_explains_itself() -> None:
    with pytest.raises(UnknownScheme) as info:
        create_backend("rpc://")
    assert "rpc://" in str(info.value)
    assert "no polyq equivalent" in str(info.value)


def test_query_string_overrides_keyword_options() -> None:
    t = create_transport("memory://registry-test?visibility_timeout=7", visibility_timeout=99)
    assert t.visibility_timeout == 7.0
    assert t.options["visibility_timeout"] == 7
    t = create_transport("memory://registry-test", visibility_timeout=99, other="x")
    assert (t.visibility_timeout, t.options["other"]) == (99.0, "x")


def test_unknown_scheme_message_hides_credentials() -> None:
    with pytest.raises(UnknownScheme) as info:
        create_transport("kafka://user:s3cret@127.0.0.1:9092")
    assert "s3cret" not in str(info.value)


def _fake_entry_points(group: str) -> dict[str, EntryPoint]:
    cls = "polyq_transports.memory:MemoryTransport"
    if group == BACKEND_GROUP:
        cls = "polyq_backends.memory:MemoryResultBackend"
    return {"memory": EntryPoint("memory", cls, group)}
