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
    from digest.services.storage.context import Context

ROOT = Path(__file__).resolve().parent.parent
EDGES = ("digest.edges.cli", "digest.edges.web", "digest.edges.demo")


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


# The packages from the bottom up, as docs/architecture.md draws them: each imports only
# itself and those before it. Storage sits below the audience and time; building and
# delivery above the audience; schedules, which start runs, above the pipeline.
PACKAGE_ORDER = (
    "digest.errors", "digest.settings", "digest.core",
    "digest.services.storage", "digest.services.telemetry", "digest.services.transports",
    "digest.services.feeds", "subscribers", "digest.services.building",
    "digest.services.delivery", "digest.services.pipeline", "schedules",
    "digest.services.operations", "digest.edges",
)


def package_of(module: str) -> str | None:
    """The entry of PACKAGE_ORDER a module belongs to (None: the packages' own roots)."""
    if module == "digest.__main__":
        return "digest.edges"
    return next((p for p in sorted(PACKAGE_ORDER, key=len, reverse=True)
                 if module == p or module.startswith(p + ".")), None)


def test_every_package_is_placed() -> None:
    """No module of ours falls outside the order (a new package must take its place)."""
    roots = {"digest", "digest.services", "subscribers", "schedules"}
    unplaced = sorted(m for m in _module_graph() if package_of(m) is None and m not in roots)
    assert not unplaced, f"not in PACKAGE_ORDER: {unplaced}"


def test_every_import_points_down() -> None:
    """Each package imports only itself and the packages below it, lazily or not: no
    arrow climbs back up (core ← storage ← … ← schedules ← operations ← edges)."""
    rank = {package: i for i, package in enumerate(PACKAGE_ORDER)}
    upward = []
    for module, imported in _module_graph().items():
        mine = package_of(module)
        if mine is None:
            continue
        upward += [f"{module} ({mine}) imports {target} ({theirs})"
                   for target in sorted(imported)
                   if (theirs := package_of(target)) is not None and rank[theirs] > rank[mine]]
    assert not upward, "\n".join(upward)


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
    assert any(n.startswith("digest/services/storage/migrations/versions/0001") for n in names)
    assert "digest/samples/arabic.xml" in names
    # The demo's pictures, which `digest serve` serves and the demo copies beside its preview.
    assert "digest/templates/web/static/demo/masthead.png" in names


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


# The one place the process may tune Python's garbage collector (docs/architecture.md).
COLLECTOR_EDGE = ("digest/edges/cli/base.py", "collector_tuned")
OURS = ("digest", "subscribers", "schedules")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_names(node: ast.AST, modules: set[str]) -> list[str]:
    """os._exit, atexit._run_exitfuncs, `from lib import _name`, `import lib._module`."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return ([f"{node.value.id}.{node.attr}"]
                if node.value.id in modules and _private(node.attr) else [])
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        if node.module.split(".")[0] in OURS:
            return []
        if any(_private(part) for part in node.module.split(".")):
            return [f"from {node.module} import …"]
        return [f"from {node.module} import {a.name}" for a in node.names if _private(a.name)]
    if isinstance(node, ast.Import):
        return [f"import {a.name}" for a in node.names
                if any(_private(part) for part in a.name.split("."))]
    return []


def _sys_modules_writes(node: ast.AST) -> list[str]:
    """sys.modules[name] = …, del sys.modules[name], sys.modules.setdefault(…)…"""
    if (isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value) == "sys.modules"):
        return ["writes sys.modules"]
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and ast.unparse(node.value) == "sys.modules" and node.attr != "get"):
        return [f"sys.modules.{node.attr}"]
    return []


def _stand_ins(node: ast.AST) -> list[str]:
    """A str or bytes subclass (a StrEnum aside), a module's stand-in."""
    if not isinstance(node, ast.ClassDef):
        return []
    bases = {ast.unparse(b) for b in node.bases}
    if bases & {"str", "bytes", "bytearray"} and not any(b.endswith("Enum") for b in bases):
        return [f"class {node.name}({', '.join(sorted(bases))})"]
    if bases & {"ModuleType", "types.ModuleType"}:
        return [f"class {node.name} stands in for a module"]
    return []


def _reaches_inside(path: Path) -> list[str]:
    """Where one module reaches into the interpreter's or a library's internals, or
    touches the garbage collector anywhere but at the process's edge."""
    relative = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for a in node.names}
    edge = {id(n) for node in ast.walk(tree)
            if relative == COLLECTOR_EDGE[0] and isinstance(node, ast.FunctionDef)
            and node.name == COLLECTOR_EDGE[1] for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        problems = [*_private_names(node, modules), *_sys_modules_writes(node),
                    *_stand_ins(node)]
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "gc" and id(node) not in edge):
            problems.append(f"gc.{node.attr} outside {COLLECTOR_EDGE[1]}")
        if isinstance(node, ast.ImportFrom) and node.module == "gc":
            problems.append("from gc import …")
        found += [f"{relative}:{getattr(node, 'lineno', '?')}: {p}" for p in problems]
    return found


def test_no_reach_into_interpreter_or_library_internals() -> None:
    """Speed through public APIs only: such reaches break silently on an upgrade."""
    found = [problem for package in OURS for path in sorted((ROOT / package).rglob("*.py"))
             for problem in _reaches_inside(path)]
    assert not found, "\n".join(found)


def _runtime_imports(path: Path) -> list[tuple[str, set[str]]]:
    """(module, names) of each import a file makes when it runs (TYPE_CHECKING aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    found: list[tuple[str, set[str]]] = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, set()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, {alias.name for alias in node.names}))
    return found


def test_the_scheduler_and_send_now_run_only_through_run_list() -> None:
    """One run path: schedules/ (slots, requested runs, the daemon, its worker) starts a
    run only through services.pipeline.run_list, so it imports none of a run's steps
    (collecting, building, recording, delivering), only the transport's type; the web
    app's "Send now" asks schedules for a run instead of running one on a thread of its
    own."""
    steps = ("digest.services.feeds.collect", "digest.services.feeds.fetch",
             "digest.services.feeds.linkcheck", "digest.services.building.drafts",
             "digest.services.delivery.recording", "digest.services.delivery.sending")
    allowed = {"digest.services.transports": {"Transport"},
               "digest.services.pipeline": {"RunEvents", "RunRequest", "RunResult", "run_list",
                                            "warm_up"}}
    for path in sorted((ROOT / "schedules").rglob("*.py")):
        for module, names in _runtime_imports(path):
            where = f"{path.relative_to(ROOT)} imports {module} {sorted(names)}"
            assert not module.startswith(steps), where
            if module.startswith(tuple(allowed)):
                assert module in allowed and names <= allowed[module], where
    for path in sorted((ROOT / "digest" / "edges" / "web").rglob("*.py")):
        for module, names in _runtime_imports(path):
            where = f"{path.relative_to(ROOT)} imports {module} {sorted(names)}"
            assert not (module == "digest.services.pipeline" and "run_list" in names), where
            assert module not in ("threading", "multiprocessing"), where


# String constants equal to a state's value that are not that state, each with why, and
# how many times the file holds one.
NOT_A_STATE = {
    # A paused schedule (Schedule.paused, a flag) shown as a word, and that flag's column
    # in `schedules list` (its JSON key and CSV heading).
    ("digest/edges/cli/run_commands.py", "paused"): 1,
    ("digest/edges/cli/service_commands.py", "paused"): 3,
    # The name of the preferences form's checkbox.
    ("digest/edges/web/public.py", "paused"): 1,
    # How a collect went (ok or partial), a field of its log line.
    ("digest/services/feeds/collect.py", "partial"): 1,
}


def _enum_and_doc_strings(tree: ast.AST) -> set[int]:
    """The string constants that may spell a state: docstrings, and the bodies of StrEnum
    classes (the definitions themselves)."""
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                exempt.add(id(first.value))
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("StrEnum")
                                                  for b in node.bases):
            exempt.update(id(n) for n in ast.walk(node))
    return exempt


def test_states_are_spelt_by_their_enums() -> None:
    """No delivery, batch, issue, subscription or run state is spelt as a string literal in
    the packages: a state is its enum's member, so a misspelt one fails at import instead
    of matching no row. Migrations keep the values of their day; SQL text that must hold a
    state binds the member or formats it in."""
    from digest.services.storage.models import BatchStatus, DeliveryStatus, IssueStatus
    from digest.services.storage.schedule_models import RunStatus
    from digest.services.storage.states import SubscriptionStatus
    members: dict[str, list[str]] = {}
    for enum in (DeliveryStatus, BatchStatus, IssueStatus, SubscriptionStatus, RunStatus):
        for member in enum:
            members.setdefault(member.value, []).append(f"{enum.__name__}.{member.name}")
    found: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            relative = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            exempt = _enum_and_doc_strings(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and node.value in members and id(node) not in exempt):
                    found.setdefault((relative, node.value), []).append((
                        node.lineno, f"{relative}:{node.lineno}: {node.value!r} (use "
                                     f"{' or '.join(members[node.value])})"))
    spelt = [where for key, places in sorted(found.items())
             if len(places) > NOT_A_STATE.get(key, 0) for _, where in sorted(places)]
    assert not spelt, "states spelt as strings:\n" + "\n".join(spelt)
