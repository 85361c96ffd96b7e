"""Generate ``docs/capabilities.md`` from the installed plugins.

Run it after changing a plugin's capabilities or entry points::

    python docs/gen_capabilities.py          # rewrite docs/capabilities.md
    python docs/gen_capabilities.py --check  # exit 1 if the file is stale

Every fact in the page comes from the code: the URL schemes from the entry points
(``polyq.transports`` and ``polyq.backends``, loaded through :mod:`polyq.registry`),
the capabilities from each plugin class's ``capabilities`` attribute, their meaning
from the ``#:`` comments in :mod:`polyq.capabilities`, and the
drivers from the distribution's optional dependencies. ``tests/core/test_docs.py``
checks that the committed page equals a fresh generation.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from typing import Any

from polyq import capabilities as capabilities_module
from polyq import registry
from polyq.capabilities import BackendCapabilities, Capabilities

OUTPUT = Path(__file__).with_name("capabilities.md")

#: Schemes served with the core dependencies only (no extra to install).
_CORE_DRIVERS = {
    "memory": "none (in-process)",
    "sqlite": "`sqlite3` (standard library) through SQLAlchemy",
}


def _field_docs(cls: type[Any], module: Any) -> dict[str, str]:
    """The ``#:`` comment above each field of the dataclass ``cls``."""
    source = inspect.getsource(module)
    tree = ast.parse(source)
    lines = source.splitlines()
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    comment: list[str] = []
                    index = stmt.lineno - 2
                    while index >= 0 and lines[index].strip().startswith("#:"):
                        comment.insert(0, lines[index].strip()[2:].strip())
                        index -= 1
                    # reStructuredText literals to Markdown ones.
                    docs[stmt.target.id] = " ".join(comment).replace("``", "`")
    return docs


def _extras_requirements() -> dict[str, list[str]]:
    """Extra name -> requirement names, from the installed distribution's metadata."""
    found: dict[str, list[str]] = {}
    try:
        reqs = requires("polyq") or []
    except PackageNotFoundError:  # pragma: no cover - polyq is always installed here
        return found
    for req in reqs:
        match = re.match(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?).*extra == ['\"]([^'\"]+)['\"]", req)
        if match:
            found.setdefault(match.group(2), []).append(match.group(1))
    return found


def _plugins(group: str) -> list[tuple[str, type[Any]]]:
    """(scheme, class) for every entry point of ``group``, by scheme."""
    out = []
    for scheme in registry.installed_schemes(group):
        cls, _ = registry.resolve(f"{scheme}://", group)
        out.append((scheme, cls))
    return out


def _by_class(plugins: Iterable[tuple[str, type[Any]]]) -> dict[type[Any], list[str]]:
    grouped: dict[type[Any], list[str]] = {}
    for scheme, cls in plugins:
        grouped.setdefault(cls, []).append(scheme)
    return grouped


def _path(cls: type[Any]) -> str:
    """``module:Class`` by the shortest module that exports the class (a plugin package
    re-exporting it from a submodule), as the entry points name it."""
    parts = cls.__module__.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if getattr(importlib.import_module(package), cls.__name__, None) is cls:
            return f"{package}:{cls.__name__}"
    return f"{cls.__module__}:{cls.__name__}"


def _per_instance(cls: type[Any]) -> bool:
    """Whether the class may replace ``capabilities`` on an instance (from its options)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover - classes without source
        return False
    return re.search(r"self\.capabilities\s*=", source) is not None


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            amount = value / factor
            text = f"{amount:.0f}" if amount == int(amount) else f"{amount:.1f}"
            return f"{text} {unit} ({value:,} bytes)"
    return f"{value:,} bytes"


def _delay(value: float) -> str:
    if value >= 86400:
        return f"{value / 86400:.1f} days ({value:,.0f} s)"
    if value >= 60:
        return f"{value / 60:.0f} min ({value:,.0f} s)"
    return f"{value:g} s"


def _cell(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "unbounded" if name in ("max_delay", "max_message_size") else "—"
    if name == "max_delay":
        return "none" if value == 0 else _delay(float(value))
    if name == "max_message_size":
        return _size(int(value))
    return str(value)


def _matrix(
    grouped: dict[type[Any], list[str]], fields: list[str], docs: dict[str, str]
) -> list[str]:
    classes = list(grouped)
    header = "| capability | " + " | ".join(f"`{c.__name__}`" for c in classes) + " | meaning |"
    rows = [header, "|" + "---|" * (len(classes) + 2)]
    for name in fields:
        cells = [_cell(name, getattr(c.capabilities, name)) for c in classes]
        rows.append(f"| `{name}` | " + " | ".join(cells) + f" | {docs.get(name, '')} |")
    return rows


def _scheme_table(
    plugins: list[tuple[str, type[Any]]], extras: dict[str, list[str]], core: bool
) -> list[str]:
    rows = ["| URL scheme | plugin | extra | driver |", "|---|---|---|---|"]
    for scheme, cls in plugins:
        extra = registry._EXTRAS.get(scheme)
        if extra:
            install = f'`pip install "polyq[{extra}]"`'
            driver = ", ".join(f"`{r}`" for r in extras.get(extra, [])) or "?"
        else:
            install = "— (core)" if core else "?"
            driver = _CORE_DRIVERS.get(scheme, "(see the plugin's documentation)")
        rows.append(f"| `{scheme}://` | `{_path(cls)}` | {install} | {driver} |")
    return rows


def generate() -> str:
    """The text of ``docs/capabilities.md``."""
    extras = _extras_requirements()
    transports = _plugins(registry.TRANSPORT_GROUP)
    backends = _plugins(registry.BACKEND_GROUP)
    t_fields = [f.name for f in dataclasses.fields(Capabilities)]
    b_fields = [f.name for f in dataclasses.fields(BackendCapabilities)]
    t_docs = _field_docs(Capabilities, capabilities_module)
    b_docs = _field_docs(BackendCapabilities, capabilities_module)
    t_grouped = _by_class(transports)
    b_grouped = _by_class(backends)
    per_instance = [c for c in [*t_grouped, *b_grouped] if _per_instance(c)]

    out = [
        "# Plugins and capabilities",
        "",
        "<!-- GENERATED by docs/gen_capabilities.py from the installed entry points and",
        "     each plugin's `capabilities`; do not edit by hand. -->",
        "",
        "This page is generated from the code: `python docs/gen_capabilities.py` rewrites it",
        "and `tests/core/test_docs.py` fails when it is out of date.",
        "",
        "## URL schemes",
        "",
        "Each entry point's name is the URL scheme it serves. A scheme with a `+driver`",
        "suffix resolves by its base scheme (`postgresql+psycopg://` → `postgresql`), and",
        "Celery's `sqla+` and `db+` prefixes are dropped (`db+postgresql://...`). Celery's",
        "`rpc://` result backend has no equivalent and says so.",
        "",
        "### Transports (brokers), entry-point group `polyq.transports`",
        "",
        *_scheme_table(transports, extras, core=True),
        "",
        "### Result backends, entry-point group `polyq.backends`",
        "",
        *_scheme_table(backends, extras, core=True),
        "",
        "A missing client library is reported when the URL is used, with the",
        "`pip install` line that fixes it.",
        "",
        "## Transport capabilities",
        "",
        "Declared by each transport class (`Transport.capabilities`, see",
        "[Writing a plugin](writing-a-plugin.md)), every field spelled out: the defaults",
        "claim nothing. The core adapts to them (it asks the broker for at most",
        "`max_delay` and holds or re-delays the rest of an ETA, a message over",
        "`max_message_size` raises `MessageTooLarge` before anything is sent) and the",
        "conformance suite skips only what a plugin declares absent.",
        "",
        *_matrix(t_grouped, t_fields, t_docs),
        "",
        "## Result backend capabilities",
        "",
        *_matrix(b_grouped, b_fields, b_docs),
        "",
    ]
    if per_instance:
        out += [
            "## Per-instance capabilities",
            "",
            "The values above are the class defaults. These plugins replace their",
            "`capabilities` on an instance when options change them (read the",
            "instance's `capabilities` to know what a configured transport does):",
            "",
        ]
        out += [f"- `{_path(c)}` (see its options on [Brokers](brokers.md))" for c in per_instance]
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Write the page, or with ``--check`` report whether it is current."""
    text = generate()
    if "--check" in argv:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_capabilities.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
