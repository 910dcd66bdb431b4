"""The project layout rules that keep the core pure."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ROOT / "paxoslog" / "core"
NODE = ROOT / "paxoslog" / "node"
FORBIDDEN = {"twisted", "time", "random", "os", "socket", "threading", "asyncio", "select",
             "subprocess", "datetime"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_nothing_impure():
    """No module of paxoslog/core imports twisted, time, random, os, socket or threads."""
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 8, files
    offenders = {f.name: sorted(_imports(f) & FORBIDDEN) for f in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"impure imports in the core: {offenders}"


def test_node_driver_imports_nothing_impure():
    """The node driver (paxoslog/node) is as pure as the core: no Twisted, no clock, no
    randomness, no threads, no sockets; it reaches neither the server nor the storage."""
    files = sorted(NODE.glob("*.py"))
    assert {"driver.py", "machines.py", "sessions.py", "commands.py"} <= {f.name for f in files}
    offenders = {}
    for f in files:
        bad = sorted(_imports(f) & FORBIDDEN)
        text = f.read_text()
        bad += [m for m in ("paxoslog.server", "paxoslog.storage", "paxoslog.sim", ".server",
                            "..server", "..storage", "..sim") if f"from {m}" in text]
        if bad:
            offenders[f.name] = bad
    assert not offenders, f"impure imports in the node driver: {offenders}"


def test_forbidden_import_would_be_detected(tmp_path):
    """The import scan sees plain, dotted and from-imports (so the layout test can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom twisted.internet import reactor\nimport random as r\n")
    assert {"os", "twisted", "random"} <= _imports(sample)


def test_layout_has_the_design_modules():
    """The modules named in DESIGN.md section 1 exist."""
    for name in ("messages", "ballot", "quorum", "log", "paxos", "raft", "ready", "limits"):
        assert (CORE / f"{name}.py").is_file(), name
    for folder in ("storage", "sim", "server"):
        assert (ROOT / "paxoslog" / folder).is_dir(), folder


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top_level_imports(path: pathlib.Path, package: str) -> set[str]:
    """Modules of this repository imported at module level (not inside functions), with
    relative imports resolved; ``package`` is the importing module's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in ("paxoslog", "statemachines")}


def _import_graph() -> dict[str, set[str]]:
    files = [p for folder in ("paxoslog", "statemachines") for p in (ROOT / folder).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _top_level_imports(path, package)
                       if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles():
    """No two modules of paxoslog or statemachines import each other, directly or through
    others, at module level (a package's __init__ re-exporting its modules aside)."""
    graph = _import_graph()
    # A package __init__ that re-exports its own submodules is not a cycle of design.
    for name in graph:
        graph[name] = {m for m in graph[name] if not (name.startswith(m + ".") and
                                                     m + "." in name)}
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_cycle_finder_finds_a_cycle():
    """The cycle finder reports a two-module cycle (so the test above can fail)."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def _core_imports(path: pathlib.Path) -> set[str]:
    """Core modules ``path`` imports, wherever the import sits (module level, inside a
    function, under TYPE_CHECKING): ``from .x import``, ``from . import x`` and
    ``paxoslog.core.x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 1:
                names |= {alias.name for alias in node.names}
            elif node.level == 0 and (node.module or "").startswith("paxoslog.core."):
                names.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[2] for alias in node.names
                      if alias.name.startswith("paxoslog.core.")}
    return names


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> imported modules) as a path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for other in sorted(graph.get(name, ())):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def _core_graph() -> dict[str, set[str]]:
    return {f.stem: _core_imports(f) - {f.stem} for f in CORE.glob("*.py")
            if f.stem != "__init__"}


def test_core_has_no_import_cycles():
    """No import cycle inside paxoslog/core, lazy and typing-only imports included."""
    assert _find_cycle(_core_graph()) is None, _find_cycle(_core_graph())


def test_import_cycle_would_be_detected(tmp_path):
    """The cycle finder reports a cycle, and sees relative and lazy imports."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    sample = tmp_path / "sample.py"
    sample.write_text("from .types import X\nfrom . import log\n"
                      "def f():\n    from .paxos import P\n")
    assert _core_imports(sample) == {"types", "log", "paxos"}


def test_only_the_factory_imports_the_protocols():
    """paxos.py and raft.py are imported by replica.py alone, and no protocol or shared
    mechanics module imports replica.py: interface types come from the leaf types.py."""
    graph = _core_graph()
    for protocol in ("paxos", "raft"):
        importers = {name for name, imports in graph.items() if protocol in imports}
        assert importers == {"replica"}, (protocol, importers)
    assert {name for name, imports in graph.items() if "replica" in imports} == set()
    assert graph["types"] <= {"limits", "log", "quorum", "ready"}, graph["types"]


def duplicate_basenames(root: pathlib.Path) -> list[str]:
    """Python files under ``root`` sharing a file name: pytest's default import mode puts
    each test folder on sys.path, so two ``test_x.py`` (or helper modules) in different
    folders make the whole collection fail."""
    seen: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if path.name not in ("__init__.py", "conftest.py"):
            seen.setdefault(path.name, []).append(str(path.relative_to(root)))
    return [", ".join(paths) for paths in seen.values() if len(paths) > 1]


def test_test_file_names_are_unique():
    """A second tests/*/test_x.py stops `make test` at collection (CI once failed so)."""
    assert duplicate_basenames(ROOT / "tests") == []


def test_a_duplicate_test_file_name_would_be_detected(tmp_path):
    for folder in ("unit", "integration"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test_same.py").write_text("")
    assert duplicate_basenames(tmp_path) == ["integration/test_same.py, unit/test_same.py"]
