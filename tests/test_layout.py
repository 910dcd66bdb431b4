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
