"""One-way layering (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md "Layers"): the contracts hold, no
module imports the package root, and no import cycle exists between modules (lazy imports inside functions count:
they are imports all the same). Skipped where import-linter (the test extra) is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _graph():
    grimp = pytest.importorskip("grimp", reason="import-linter is not installed (pip install -e '.[test]')")
    return grimp.build_graph("swiftsam", cache_dir=None)


def test_lint_imports_passes():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_module_imports_the_package_root():
    graph = _graph()
    assert sorted(graph.find_modules_that_directly_import("swiftsam")) == []


def _cycles(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(adjacency):
        if start in index:
            continue
        work = [(start, iter(sorted(adjacency[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(adjacency[child]))))
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
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = _graph()
    adjacency = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(adjacency) == []


def _contract_layers() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers" and c.get("containers") == ["swiftsam"]]
    return layers["layers"]


def _doc_layers() -> list[str]:
    """docs/ARCHITECTURE.md's layer table as the contract spells layers ("everything | eval | bench")."""
    import re

    rows: dict[int, tuple[str, list[str]]] = {}
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        found = re.match(r"\| (\d+)( `\\?([|:])`)? \| (.+?) \| ", line)
        if found:
            names = [re.sub(r"\.py$", "", m) for m in re.findall(r"`swiftsam/([\w.]+?)/?`", found.group(4))]
            sep, listed = rows.setdefault(int(found.group(1)), (found.group(3) or "|", []))
            listed += names
    return [f" {sep} ".join(names) for _, (sep, names) in sorted(rows.items())]


def test_architecture_doc_has_the_contract_layers():
    assert _doc_layers() == _contract_layers()
