"""ARCHITECTURE.md's layering rule, checked on the imports of every module (read with ``ast``; nothing is
imported).

The rule is the doc's module table: each row's modules import only dlogit modules of the rows above it
(or of their own row), and ``dask`` / ``distributed`` only where the row's "may import" cell names them --
so the math and the solvers know nothing of Dask, and only the rows that say so touch ``distributed``.
Besides: no module imports another module's private name (``_Blocks``) or a private module of another
package; the CLI stays over the library's public modules; a private name of a third-party package is
used only in the function that isolates it for one use (each pinned by a test that fails when it changes).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dlogit"

#: Known violations, left for their owners at the time the test came in (issue 20). Each entry is
#: ``(importing module, imported module.name)``; the test fails when one is fixed and still listed, so the
#: list only shrinks. The lead drops these after the merge that fixes them.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()

#: Third-party private names and the one function allowed to use each (its behaviour is pinned by a test
#: that fails when the private API changes: tests/test_private_apis.py).
PRIVATE_THIRD_PARTY: dict[str, set[tuple[str, str]]] = {
    # dask documents its task spec only there: the chunks' own tasks behind aliases, and the read tasks
    # of a read_data graph (tests/test_stream.py fails when either walk stops finding them)
    "dask._task_spec": {("dlogit.engine.placement", "resolve_aliases"), ("dlogit.io.stream", "stream_sources")},
    "sklearn.utils._param_validation": {("dlogit.estimator", "_sklearn_validation")},
    "sklearn.utils.validation._check_sample_weight": {("dlogit.inputs", "checked_sample_weight")},
}

#: Modules of the fit's internals that the CLI reaches only through the library's public modules.
CLI_FORBIDDEN = ("dlogit.chunks", "dlogit.objective", "dlogit.training", "dlogit.kernels", "dlogit.folds",
                 "dlogit.engine.")


@dataclass
class Row:
    index: int
    paths: list[str]  # "dlogit/family.py", "dlogit/engine/"
    may_import: str


@dataclass
class Imp:
    module: str  # the imported module ("dlogit.chunks", "distributed")
    name: str | None  # the imported name (``from module import name``), or None
    function: str | None  # the function the import sits in (None: module level)
    line: int


@dataclass
class Module:
    name: str
    path: Path
    imports: list[Imp] = field(default_factory=list)


def table_rows() -> list[Row]:
    """The module table of ARCHITECTURE.md: its first cell's paths and its "may import" cell."""
    rows = []
    for line in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `dlogit"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        paths = []
        for token in re.findall(r"`([^`]+)`", cells[0]):
            if not token.endswith((".py", "/")):
                continue  # logistic.cu
            paths.append(token if token.startswith("dlogit/") else f"dlogit/{token}")
        rows.append(Row(len(rows), paths, cells[-1]))
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(path: Path) -> list[Imp]:
    """Every import of a module, at any depth (functions' lazy imports too), with ``importlib.import_module``
    of a literal name counted as an import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Imp] = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = function or node.name
        if isinstance(node, ast.Import):
            found.extend(Imp(a.name, None, function, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.extend(Imp(mod, a.name, function, node.lineno) for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Imp(node.args[0].value, None, function, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def all_modules() -> dict[str, Module]:
    return {module_name(p): Module(module_name(p), p, read_imports(p)) for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()
ROWS = table_rows()


def is_dlogit_module(name: str) -> bool:
    return name in MODULES


def resolve(imp: Imp) -> tuple[str, str | None]:
    """``from dlogit import engine`` imports the module ``dlogit.engine``; ``from dlogit.chunks import x``
    the name ``x`` of ``dlogit.chunks``."""
    if imp.name is not None and f"{imp.module}.{imp.name}" in MODULES:
        return f"{imp.module}.{imp.name}", None
    return imp.module, imp.name


def row_of(module: str) -> Row | None:
    path = MODULES[module].path.relative_to(ROOT).as_posix()
    best: tuple[int, Row] | None = None
    for row in ROWS:
        for p in row.paths:
            matches = path == p or (p.endswith("/") and path.startswith(p))
            if matches and (best is None or len(p) > best[0]):
                best = (len(p), row)
    return best[1] if best else None


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _private_part(module: str, name: str | None) -> bool:
    return any(_private(p) for p in [*module.split("."), *([name] if name else [])])


def private_use(importer: str, target: str, name: str | None) -> bool:
    """Whether ``importer`` uses another module's private name, or a private module of a package it is
    not in (``dlogit._xp`` is the whole package's; ``dlogit.kernels._cpu_jit`` the kernels')."""
    if name is not None and _private(name):
        return True
    parts = target.split(".")
    return any(_private(p) and not (importer + ".").startswith(".".join(parts[:i]) + ".")
               for i, p in enumerate(parts))


def test_the_table_covers_every_module():
    assert len(ROWS) >= 15, "ARCHITECTURE.md's module table was not found"
    missing = sorted(m for m in MODULES if m != "dlogit" and row_of(m) is None)
    assert not missing, f"modules in no row of ARCHITECTURE.md's table: {missing}"
    for row in ROWS:
        for p in row.paths:
            assert (ROOT / p).exists(), f"ARCHITECTURE.md names {p}, which does not exist"


def violations() -> set[tuple[str, str]]:
    """Every (importing module, imported module[.name]) pair that breaks the rule, with its reason."""
    found: dict[tuple[str, str], str] = {}
    for mod in MODULES.values():
        if mod.name == "dlogit":  # the package facade: lazy attributes, no imports of its own layer
            continue
        row = row_of(mod.name)
        assert row is not None
        for imp in mod.imports:
            target, name = resolve(imp)
            top = target.split(".")[0]
            key = (mod.name, target + (f".{name}" if name else ""))
            if top in ("dask", "distributed"):
                allowed = re.search(rf"\b{top}\b", row.may_import) or "everything" in row.may_import
                if not allowed:
                    found[key] = f"imports {top} (its row may import: {row.may_import})"
                continue
            if top != "dlogit" or not is_dlogit_module(target):
                continue
            if private_use(mod.name, target, name):
                found[key] = "imports a private name of another module"
            other = row_of(target)
            if other is not None and other.index > row.index:
                found[key] = (f"imports a module of a lower row of ARCHITECTURE.md's table "
                              f"({other.paths[0]} is below {row.paths[0]})")
            if mod.name.startswith("dlogit.cli") and target.startswith(CLI_FORBIDDEN):
                found[key] = "the CLI reaches into the fit's internals"
    return found  # type: ignore[return-value]


def test_imports_follow_the_layering_rule():
    found = violations()
    new = {k: v for k, v in found.items() if k not in KNOWN_EXCEPTIONS}
    assert not new, "layering violations:\n" + "\n".join(f"  {a} -> {b}: {why}" for (a, b), why in sorted(new.items()))


def test_known_exceptions_are_still_violations():
    """A fixed pair must leave KNOWN_EXCEPTIONS (the list only shrinks)."""
    stale = KNOWN_EXCEPTIONS - set(violations())
    assert not stale, f"no longer violations, drop them from KNOWN_EXCEPTIONS: {sorted(stale)}"


@pytest.mark.parametrize("top", ["dask", "distributed"])
def test_the_math_and_the_solvers_know_nothing_of_dask(top):
    """The rows of the math (``_xp`` ... ``spec``) and the solvers name no Dask in their cells, and their
    modules import none (the general rule above, stated for the rows the issue names)."""
    math = [m for m in MODULES if m.startswith(("dlogit.solvers", "dlogit.family", "dlogit.objective",
                                                "dlogit.loss", "dlogit.chunks", "dlogit.penalty",
                                                "dlogit.kernels", "dlogit._xp"))]
    assert "dlogit.solvers" in math and "dlogit.family" in math
    bad = sorted((m, i.module) for m in math for i in MODULES[m].imports if i.module.split(".")[0] == top)
    assert not bad


def test_distributed_is_imported_only_where_the_doc_says():
    """The engine, cluster set-up, the monitor's scheduler plugin and the CLI's client: exactly the rows
    whose "may import" cell names ``distributed``."""
    users = {m for m, mod in MODULES.items() if any(i.module.split(".")[0] == "distributed" for i in mod.imports)}
    rows = {row_of(m).index for m in users}
    named = {r.index for r in ROWS if re.search(r"\bdistributed\b", r.may_import)}
    assert rows <= named
    assert any(m.startswith("dlogit.engine") for m in users)


def test_third_party_private_names_are_isolated():
    for mod in MODULES.values():
        for imp in mod.imports:
            top = imp.module.split(".")[0]
            if top in ("dlogit", "__future__") or not _private_part(imp.module, imp.name):
                continue
            full = f"{imp.module}.{imp.name}" if imp.name else imp.module
            prefix = next((p for p in PRIVATE_THIRD_PARTY if full == p or full.startswith(p + ".")), None)
            where = f"{mod.name}:{imp.line} imports {imp.module}.{imp.name or ''}"
            assert prefix is not None, f"{where}: a private third-party name outside PRIVATE_THIRD_PARTY"
            assert (mod.name, imp.function) in PRIVATE_THIRD_PARTY[prefix], \
                f"{where} outside the functions that isolate it {sorted(PRIVATE_THIRD_PARTY[prefix])}"


def test_the_rule_catches_a_violation(tmp_path):
    """The reader sees lazy imports, relative imports and import_module of a literal."""
    src = tmp_path / "dlogit" / "solvers"
    src.mkdir(parents=True)
    (src / "x.py").write_text(
        "def f():\n    from ..chunks import _Blocks\n    import importlib\n"
        "    importlib.import_module('distributed')\n")
    global ROOT
    saved = ROOT
    ROOT = tmp_path
    try:
        imps = read_imports(src / "x.py")
    finally:
        ROOT = saved
    assert [(i.module, i.name, i.function) for i in imps] == [
        ("dlogit.chunks", "_Blocks", "f"), ("importlib", None, "f"), ("distributed", None, "f")]


#: constants defined twice that the lead merges into one home after the merge (cluster.py and worker.py are
#: the first-contact helper's: worker.py cannot import cluster.py's set-up at worker start)
KNOWN_TWICE: set[tuple[str, str]] = set()


def test_shared_constants_have_one_home():
    """The event topic, the plugin names and the local-worker marker are each assigned in one module
    (the others import it)."""
    homes: dict[tuple[str, str], list[str]] = {}
    for mod in MODULES.values():
        for node in ast.parse(mod.path.read_text(encoding="utf-8")).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id in ("TOPIC", "PLUGIN_NAME", "LOCAL_WORKER_ENV")
                    and isinstance(node.value, ast.Constant)):
                homes.setdefault((node.targets[0].id, node.value.value), []).append(mod.name)
    twice = {k: v for k, v in homes.items() if len(v) > 1}
    assert ("TOPIC", "dlogit") in homes and ("PLUGIN_NAME", "dlogit-monitor") in homes
    assert set(twice) == KNOWN_TWICE, twice
