"""The layout rules: subscribers and schedules never import the CLI or the web layer."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from digest.services.context import Context

ROOT = Path(__file__).resolve().parent.parent
EDGES = ("digest.edges.cli", "digest.edges.web", "digest.edges.demo")
LAYERS = ("digest.core", "digest.services", "digest.edges")  # each may import those before it


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", ["subscribers", "schedules"])
def test_audience_and_time_never_import_the_edges(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = {m for m in imports_of(path) if m.startswith(EDGES)}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_not_even_indirectly() -> None:
    modules = [f"{p.parent.name}.{p.stem}" for package in ("subscribers", "schedules")
               for p in sorted((ROOT / package).glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({EDGES!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]", f"importing subscribers and schedules loads {out}"


def test_the_core_is_pure() -> None:
    """digest/core does no I/O: no database, network, CLI or web library, and nothing of
    ours but the core itself and the shared errors."""
    for path in (ROOT / "digest" / "core").rglob("*.py"):
        bad = {m for m in imports_of(path)
               if m.split(".")[0] in {"sqlalchemy", "httpx", "click", "starlette", "sendgrid",
                                      "smtplib", "socket", "urllib.request", "apscheduler"}
               or (m.startswith(("digest.", "subscribers", "schedules"))
                   and not m.startswith("digest.core") and m != "digest.errors")}
        assert not bad, f"{path.relative_to(ROOT)} reaches outside the pure core: {bad}"


def test_the_layers_point_one_way() -> None:
    """core ← services ← edges: a layer imports only those before it (and the shared
    settings and errors); subscribers and schedules sit with the services."""
    graph = _module_graph()
    rank = {layer: i for i, layer in enumerate(LAYERS)}

    def layer_of(module: str) -> int | None:
        if module.startswith(("subscribers", "schedules")):
            return rank["digest.services"]
        return next((rank[layer] for layer in LAYERS if module.startswith(layer)), None)

    for module, imported in graph.items():
        mine = layer_of(module)
        if mine is None:
            continue
        upward = {m for m in imported if (layer_of(m) or 0) > mine}
        assert not upward, f"{module} imports a later layer: {upward}"


def test_web_handlers_are_module_level_functions(ctx: Context) -> None:
    """Every route of the web app answers with a plain function its module holds under
    that name (Starlette's ``async def homepage(request)`` then ``Route("/", homepage)``),
    never a closure made inside a ``routes()`` function; and no function in
    digest/edges/web runs over 100 lines."""
    from starlette.routing import Route

    from digest.edges.web.app import create_app
    routes = [r for r in create_app(ctx).routes if isinstance(r, Route)]
    assert len(routes) > 20
    for route in routes:
        endpoint = route.endpoint
        module = inspect.getmodule(inspect.unwrap(endpoint))
        assert getattr(module, endpoint.__name__, None) is endpoint, \
            f"{route.path} is answered by {endpoint.__qualname__}, not a module-level function"
    too_long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                f"({(node.end_lineno or node.lineno) - node.lineno + 1} lines)"
                for path in sorted((ROOT / "digest" / "edges" / "web").glob("*.py"))
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and (node.end_lineno or node.lineno) - node.lineno + 1 > 100]
    assert not too_long, "\n".join(too_long)


def test_wheel_ships_templates_and_typing_marker(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel",
                           "-d", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "digest/templates/email/issue.html" in names
    assert "digest/templates/email/issue.txt" in names
    assert {"digest/py.typed", "subscribers/py.typed", "schedules/py.typed"} <= names
    assert any(n.startswith("digest/services/migrations/versions/0001") for n in names)
    assert "digest/samples/arabic.xml" in names


def _module_graph() -> dict[str, set[str]]:
    """Every module of the three packages → the modules of ours it imports, lazily inside
    a function or not (imports under TYPE_CHECKING, for annotations only, aside)."""
    modules: dict[str, Path] = {}
    for package in ("digest", "subscribers", "schedules"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for n in ast.walk(node)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        found = set()
        for target in targets:
            known = target
            while known and known not in modules:
                known = known.rpartition(".")[0]
            if known and known != name:
                found.add(known)
        graph[name] = found
    return graph


def test_no_import_circles() -> None:
    graph = _module_graph()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycle = [*path[path.index(imported):], imported]
                raise AssertionError("import circle: " + " → ".join(cycle))
            if imported not in state:
                walk(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
