"""The shape of the code base, checked: module sizes, what importing the plugin
contract loads, and that no two ``polyq`` modules import each other, even through
imports written inside functions.

These are the promises ``docs/architecture.md`` makes to a newcomer; a change that
breaks one fails here with the offending module or cycle named.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("polyq", "polyq_transports", "polyq_backends", "polyq_clients")
MAX_LINES = 600
#: How many ``polyq`` modules ``import polyq.transport`` may load (the contract and
#: what it stands on, with ``polyq/__init__``).
MAX_CONTRACT_MODULES = 6


def _modules(package: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name an import statement anywhere in ``tree`` (functions included)
    names, except those under ``if TYPE_CHECKING:``, which never run."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[str]]:
    modules = _modules("polyq")
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for target in _runtime_imports(tree, name, is_package):
            if target not in modules:
                continue
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                graph[name].add(".".join(parts[:depth]))
        # A package's __init__ re-exporting its own children is not a cycle.
        graph[name] = {
            t for t in graph[name] if t != name and not (is_package and t.startswith(name + "."))
        }
        # Every module's ancestors run before it: those edges are implied, not written.
        graph[name] -= {".".join(name.split(".")[:d]) for d in range(1, name.count(".") + 1)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_over_600_lines() -> None:
    too_long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path in _modules(package).values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job): {too_long}"


def test_contract_import_loads_little() -> None:
    code = (
        "import sys, json; import polyq.transport, polyq.backend; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'polyq')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = json.loads(out)
    assert len(loaded) <= MAX_CONTRACT_MODULES, f"the contract loads {len(loaded)}: {loaded}"


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among polyq modules (imports in functions count): " + (
        "; ".join(" <-> ".join(c) for c in cycles)
    )


#: The layers of ``polyq``, bottom to top, by module-name prefix (a prefix holds the
#: module and everything under it). A module imports (at run time) only modules of
#: its own layer or lower ones. docs/architecture.md draws the same picture.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "leaf",
        (
            "polyq",  # the package __init__ alone: its names load on first use
            "polyq.exceptions",
            "polyq.states",
            "polyq.url",
            "polyq.queues",
            "polyq.signals",
            "polyq.serialization",
            "polyq.request",
            "polyq.schedules",
            "polyq.utils",
        ),
    ),
    ("contract", ("polyq.transport", "polyq.backend", "polyq.capabilities", "polyq.message")),
    # Message signing: signs and verifies the envelope; the app and everything above use it.
    ("security", ("polyq.security",)),
    (
        "app",
        (
            "polyq.app",
            "polyq.config",
            "polyq.current",
            "polyq.task",
            "polyq.result",
            "polyq.registry",
            "polyq.loader",
        ),
    ),
    ("canvas", ("polyq.canvas",)),
    ("execution", ("polyq.execution",)),
    # Events and the control client sit below the worker: the worker speaks their
    # protocols (polyq.events.EventDispatcher, polyq.control.CONTROL_CHANNEL).
    ("events", ("polyq.events",)),
    ("control", ("polyq.control", "polyq.control_args")),
    ("worker", ("polyq.worker",)),
    ("beat", ("polyq.beat",)),
    ("monitor", ("polyq.monitor",)),
    # The CLI wires everything together (worker, beat, the monitor's commands).
    ("cli", ("polyq.cli", "polyq.__main__", "polyq.demo")),
    ("top", ("polyq.testing", "polyq.contrib")),
)

#: Upward imports allowed: lazy imports inside one method each, so that Celery's
#: API stays on the app and the task (``app.control``, ``app.Worker``,
#: ``app.add_periodic_task``, ``task_send_sent_event``; ``task.s()``, ``task.map()``,
#: ``task.chunks()``, ``task.apply()``). None of the targets imports its source back
#: at run time (``test_no_import_cycle`` proves it).
FACADE_EDGES = frozenset(
    {
        ("polyq.app.base", "polyq.control"),
        ("polyq.app.base", "polyq.events"),
        ("polyq.app.base", "polyq.worker"),
        ("polyq.app.base", "polyq.beat"),
        ("polyq.task", "polyq.canvas"),
        ("polyq.task", "polyq.execution"),
    }
)


def _layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "polyq" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in _modules("polyq") if _layer_of(m) is None)
    assert not missing, f"modules in no layer of LAYERS (place them): {missing}"


def test_imports_go_down_the_layers() -> None:
    upward = []
    used_facades = set()
    for source, targets in sorted(_graph().items()):
        source_layer = _layer_of(source)
        if source_layer is None:
            continue  # test_every_module_has_a_layer reports it
        for target in sorted(targets):
            target_layer = _layer_of(target)
            if target_layer is None or target_layer <= source_layer:
                continue
            if (source, target) in FACADE_EDGES:
                used_facades.add((source, target))
                continue
            upward.append(
                f"{source} ({LAYERS[source_layer][0]}) -> {target} ({LAYERS[target_layer][0]})"
            )
    assert not upward, "imports going up a layer: " + "; ".join(upward)
    # The allowed list stays short and true: an edge no longer written is removed.
    assert used_facades == FACADE_EDGES, f"facade edges not used: {FACADE_EDGES - used_facades}"


#: Where reaching into an object's ``_private`` attributes is the point: the RabbitMQ
#: plugin's fast path is the one module allowed to rely on pika's internals (it is
#: enabled only for the pika versions it is tested with; docs/design/rabbitmq.md).
PRIVATE_ACCESS_ALLOWED = frozenset({"polyq_transports/rabbitmq/fastpath.py"})
#: Underscored names that are public API: ``os._exit``, namedtuple's ``_replace``.
PUBLIC_UNDERSCORED = frozenset({"_exit", "_replace", "_asdict", "_fields"})


def test_no_module_reads_private_state() -> None:
    found = []
    for package in PACKAGES:
        for path in _modules(package).values():
            relative = str(path.relative_to(ROOT))
            if relative in PRIVATE_ACCESS_ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text(), relative)):
                if not isinstance(node, ast.Attribute):
                    continue
                name, owner = node.attr, node.value
                if not name.startswith("_") or name.startswith("__") or name in PUBLIC_UNDERSCORED:
                    continue
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                # super()._hook: a class's own hierarchy, not another object's state.
                if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                    continue
                found.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "private state read across objects (give it a public method):\n" + (
        "\n".join(found)
    )


def test_core_imports_no_broker_client() -> None:
    clients = {"redis", "pika", "boto3", "botocore", "psycopg", "pymysql", "nats", "aiormq"}
    plugins = {"polyq_transports", "polyq_backends", "polyq_clients"}
    found = []
    for name, path in _modules("polyq").items():
        tree = ast.parse(path.read_text(), str(path))
        for target in _runtime_imports(tree, name, path.name == "__init__.py"):
            if target.split(".")[0] in clients | plugins:
                found.append(f"{name} imports {target}")
    assert not found, found
