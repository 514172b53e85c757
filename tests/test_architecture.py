"""The package's architecture, read from its source with ``ast`` (nothing of hessext is imported).

Three house rules (docs/internals.md, section "Layers"), checked on every import statement of every module of
``hessext``, at module level and inside functions alike:

a) **no import cycles** among hessext modules. An import of a package ``hessext.p`` counts as an import of
   ``hessext/p/__init__.py``; importing ``hessext.p.m`` from outside ``hessext.p`` also runs ``hessext.p``'s
   ``__init__`` (an implicit edge; the root package ``hessext`` is never such an implicit target, since every
   module lives inside it);
b) **no private name crosses modules**: ``from .x import _name`` where ``_name`` is not a module, and
   attribute access ``m._name`` on a name bound to an imported hessext module. Private *modules*
   (``hessext._checks``, ``from . import _backend``) may be imported; dunder names (``__version__``) are
   public;
c) **imports go downward only**: every module belongs to exactly one row of the "Layers" table (a package row
   covers its submodules; the root ``hessext`` row covers only ``hessext/__init__.py``) and imports only
   modules of its own layer or lower ones.

``from . import x`` resolves to the submodule ``hessext.x`` when ``x`` is a module (a ``.py`` file, a
package, a compiled extension or a generated module named in the table), else to the package itself.
``importlib.import_module("hessext.x")`` with a literal name counts as an import. Imports under
``if TYPE_CHECKING:`` count too: an upward reference is an upward reference even if only the type checker
follows it.

The checker runs on another tree too (it reads ``<root>/hessext`` and ``<root>/docs/internals.md``):
``HESSEXT_ARCH_ROOT=/path/to/checkout pytest tests/test_architecture.py``, or
``python tests/test_architecture.py [root]``, which prints every violation and exits 1 if there is one.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "hessext"
REPO = Path(__file__).resolve().parents[1]
# Compiled extension modules (no Python source, so no node of the graph); those built in the tree are found
# by their file names as well, this covers a checkout where the extension has not been built.
COMPILED_EXTENSIONS = frozenset({"hessext._C"})


# ----------------------------------------------------------------------------------------------------------
# Reading the package


@dataclass(frozen=True)
class Edge:
    """One import of hessext module ``target`` by module ``importer`` (``file:line``: the statement)."""

    importer: str
    target: str
    file: str
    line: int
    text: str
    implicit: bool = False  # the target is only a parent package of what the statement names

    def where(self) -> str:
        how = f" (implicitly: runs {self.target}'s __init__)" if self.implicit else ""
        return f"{self.file}:{self.line}: `{self.text}`{how}"


@dataclass
class Package:
    """The modules of one package tree and the import edges between them."""

    root: Path                                              # the directory holding the package directory
    files: dict[str, Path] = field(default_factory=dict)    # module name -> source file
    extensions: set[str] = field(default_factory=set)       # compiled modules (no source)
    declared: set[str] = field(default_factory=set)         # names in the layer table (generated modules)
    edges: list[Edge] = field(default_factory=list)
    private: list[str] = field(default_factory=list)        # violation messages of rule b)
    unresolved: list[str] = field(default_factory=list)     # imports of hessext modules that do not exist

    def is_module(self, name: str) -> bool:
        return name in self.files or name in self.extensions or name in self.declared

    def is_package(self, name: str) -> bool:
        path = self.files.get(name)
        return path is not None and path.name == "__init__.py"

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def discover(pkg_dir: Path) -> Package:
    """The ``.py`` modules and compiled extensions under ``pkg_dir`` (a directory named like the package)."""
    if not pkg_dir.is_dir():
        raise FileNotFoundError(f"pkg_dir={str(pkg_dir)!r} is not a directory")
    pkg = Package(root=pkg_dir.parent, extensions=set(COMPILED_EXTENSIONS))
    for path in sorted(pkg_dir.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        parts = list(path.relative_to(pkg_dir.parent).parts)
        if path.suffix == ".py":
            parts[-1] = path.stem
            if parts[-1] == "__init__":
                parts.pop()
            pkg.files[".".join(parts)] = path
        elif path.suffix in (".so", ".pyd"):
            parts[-1] = path.name.split(".")[0]
            pkg.extensions.add(".".join(parts))
    return pkg


def is_private(name: str) -> bool:
    """``_x`` is private; dunder names (``__version__``, ``__all__``) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_ours(name: str | None) -> bool:
    return name is not None and (name == PACKAGE or name.startswith(PACKAGE + "."))


def absolute_base(module: str, is_package: bool, level: int, name: str | None) -> str | None:
    """The absolute module of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(parts):
        return None  # beyond the top-level package: Python raises ImportError
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([name] if name else []))


class _ModuleReader:
    """Collects the edges, module bindings and private-name violations of one module."""

    def __init__(self, pkg: Package, module: str, path: Path):
        self.pkg, self.module, self.path = pkg, module, path
        self.file = pkg.rel(path)
        self.source = path.read_text(encoding="utf-8")
        self.tree = ast.parse(self.source, filename=str(path))
        self.bindings: dict[str, str] = {}  # local name -> hessext module it is bound to

    def text(self, node: ast.AST) -> str:
        segment = ast.get_source_segment(self.source, node) or ast.unparse(node)
        return " ".join(segment.split())

    def add_edge(self, node: ast.AST, target: str) -> None:
        if target in self.pkg.extensions:
            return
        if not self.pkg.is_module(target):
            self.pkg.unresolved.append(
                f"{self.file}:{node.lineno}: `{self.text(node)}`: {target} is no module of the package")
            return
        if target != self.module:
            self.pkg.edges.append(Edge(self.module, target, self.file, node.lineno, self.text(node)))
        parts = target.split(".")
        for i in range(2, len(parts)):  # parent packages below the root
            parent = ".".join(parts[:i])
            if self.module != parent and not self.module.startswith(parent + "."):
                edge = Edge(self.module, parent, self.file, node.lineno, self.text(node), implicit=True)
                self.pkg.edges.append(edge)

    def visit_import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not is_ours(alias.name):
                continue
            self.add_edge(node, alias.name)
            if alias.asname:
                self.bindings[alias.asname] = alias.name
            else:
                self.bindings[alias.name.split(".")[0]] = PACKAGE

    def visit_import_from(self, node: ast.ImportFrom) -> None:
        base = absolute_base(self.module, self.pkg.is_package(self.module), node.level, node.module)
        if not is_ours(base):
            return
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if alias.name != "*" and self.pkg.is_module(full):
                self.add_edge(node, full)
                self.bindings[alias.asname or alias.name] = full
                continue
            self.add_edge(node, base)
            if is_private(alias.name):
                self.pkg.private.append(
                    f"{self.file}:{node.lineno}: `{self.text(node)}` imports the private name {alias.name!r} "
                    f"of module {base}: make it public (or move it to the module that owns that policy)")

    def visit_call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "import_module" or not node.args:
            return
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and is_ours(arg.value):
            self.add_edge(node, arg.value)

    def bound_module(self, node: ast.expr) -> str | None:
        """The hessext module an expression (``name`` or ``name.sub``) denotes, if any."""
        if isinstance(node, ast.Name):
            return self.bindings.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.bound_module(node.value)
            if base is not None and self.pkg.is_module(f"{base}.{node.attr}"):
                return f"{base}.{node.attr}"
        return None

    def check_attributes(self) -> None:
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Attribute) or not is_private(node.attr):
                continue
            base = self.bound_module(node.value)
            if base is None or base == self.module or self.pkg.is_module(f"{base}.{node.attr}"):
                continue
            self.pkg.private.append(
                f"{self.file}:{node.lineno}: `{self.text(node)}` reaches into the private attribute "
                f"{node.attr!r} of module {base}: make it public in {base} (or pass it in)")

    def read(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                self.visit_import(node)
            elif isinstance(node, ast.ImportFrom):
                self.visit_import_from(node)
            elif isinstance(node, ast.Call):
                self.visit_call(node)
        self.check_attributes()


def read_package(pkg_dir: Path, declared: set[str] = frozenset()) -> Package:
    """Every module of the package under ``pkg_dir`` with its import edges (``declared``: table names)."""
    pkg = discover(pkg_dir)
    pkg.declared = {name for name in declared if is_ours(name)}
    for module, path in pkg.files.items():
        _ModuleReader(pkg, module, path).read()
    return pkg


# ----------------------------------------------------------------------------------------------------------
# a) cycles


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative; nodes in sorted order)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                components.append(sorted(component))
    return components


def shortest_cycle(graph: dict[str, set[str]], start: str, allowed: set[str]) -> list[str]:
    """A shortest cycle ``[start, ..., start]`` through ``start`` within ``allowed`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in allowed:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return []


def find_cycles(pkg: Package) -> list[str]:
    """One message per strongly connected group of modules: its members and a shortest cycle through each."""
    graph: dict[str, set[str]] = {module: set() for module in pkg.files}
    first: dict[tuple[str, str], Edge] = {}
    for edge in pkg.edges:
        graph.setdefault(edge.importer, set()).add(edge.target)
        key = (edge.importer, edge.target)
        if key not in first or (first[key].implicit and not edge.implicit):
            first[key] = edge
    messages = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        seen: set[frozenset[tuple[str, str]]] = set()
        lines = [f"import cycle among {len(component)} modules: {component}"]
        for module in component:
            cycle = shortest_cycle(graph, module, members)
            hops = frozenset(zip(cycle, cycle[1:]))
            if not cycle or hops in seen:
                continue
            seen.add(hops)
            lines.append(f"  cycle {cycle}:")
            lines += [f"    {a} -> {b}: {first[(a, b)].where()}" for a, b in zip(cycle, cycle[1:])]
        messages.append("\n".join(lines))
    return messages


# ----------------------------------------------------------------------------------------------------------
# c) layers


@dataclass(frozen=True)
class Row:
    """One row of the layer table."""

    number: int
    name: str
    modules: tuple[str, ...]
    line: int

    def label(self) -> str:
        return f"layer {self.number} {self.name}"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_layers(markdown: Path) -> list[Row]:
    """The rows of the table in section "## Layers" of ``markdown`` (columns "layer" and "modules")."""
    lines = markdown.read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.fullmatch(r"##\s+Layers\s*", line))
    except StopIteration:
        raise AssertionError(f"{markdown}: no section '## Layers'") from None
    table = []
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("## "):
            break
        if lines[i].lstrip().startswith("|"):
            table.append((i + 1, lines[i]))
        elif table:
            break
    if len(table) < 3:
        raise AssertionError(f"{markdown}:{start + 1}: section 'Layers' has no table (header, rule, rows)")
    header = [cell.lower() for cell in _cells(table[0][1])]
    if "layer" not in header or "modules" not in header:
        raise AssertionError(f"{markdown}:{table[0][0]}: the layer table needs columns 'layer' and "
                             f"'modules', got {header}")
    col_layer, col_modules = header.index("layer"), header.index("modules")
    rows = []
    for lineno, line in table[2:]:
        cells = _cells(line)
        match = re.fullmatch(r"(\d+)\s*(.*)", cells[col_layer]) if len(cells) == len(header) else None
        if match is None:
            raise AssertionError(f"{markdown}:{lineno}: a row needs {len(header)} cells and a layer like "
                                 f"'2 operator', got {line!r}")
        names = tuple(re.findall(r"`([^`]+)`", cells[col_modules]))
        bad = [name for name in names if not is_ours(name)]
        if bad or not names:
            raise AssertionError(f"{markdown}:{lineno}: modules must be backticked {PACKAGE} names, got "
                                 f"{cells[col_modules]!r}")
        rows.append(Row(int(match.group(1)), match.group(2).strip(), names, lineno))
    return rows


def rows_of(module: str, rows: list[Row]) -> list[Row]:
    """The rows naming ``module`` or a package above it (the root package row covers only itself)."""
    found = []
    for row in rows:
        for name in row.modules:
            if module == name or (name != PACKAGE and module.startswith(name + ".")):
                found.append(row)
                break
    return found


def generated(pkg: Package, module: str) -> bool:
    """Whether ``module`` is a generated file that git ignores (``hessext/_build_info.py``, from setup.py)."""
    ignore = pkg.root / ".gitignore"
    if not ignore.is_file():
        return False
    candidates = [module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"]
    patterns = [line.strip().lstrip("/") for line in ignore.read_text(encoding="utf-8").splitlines()]
    return any(pattern in candidates for pattern in patterns if pattern and not pattern.startswith("#"))


def table_problems(pkg: Package, rows: list[Row], markdown: Path) -> list[str]:
    """Modules in no row or in several rows of the table, and table names that are no module (stale rows)."""
    problems = []
    for row in rows:
        for name in row.modules:
            if name not in pkg.files and name not in pkg.extensions and not generated(pkg, name):
                problems.append(f"{markdown}:{row.line}: {row.label()} names {name}, which is no module "
                                f"(nor a generated one in .gitignore): remove it or add the module")
    for module in sorted(pkg.files):
        found = rows_of(module, rows)
        where = pkg.rel(pkg.files[module])
        if not found:
            problems.append(f"{where}: module {module} is in no row of the layer table ({markdown}): add it "
                            f"to the row of its layer")
        elif len(found) > 1:
            labels = ", ".join(f"{row.label()} (line {row.line})" for row in found)
            problems.append(f"{where}: module {module} is in several rows of the layer table: {labels}")
    return problems


def upward_imports(pkg: Package, rows: list[Row]) -> list[str]:
    """Imports of a module of a higher layer than the importer's."""
    messages = []
    for edge in pkg.edges:
        mine, theirs = rows_of(edge.importer, rows), rows_of(edge.target, rows)
        if len(mine) != 1 or len(theirs) != 1:
            continue  # reported by table_problems
        if theirs[0].number > mine[0].number:
            messages.append(f"{edge.where()}: {edge.importer} ({mine[0].label()}) imports {edge.target} "
                            f"({theirs[0].label()}), a higher layer")
    return messages


# ----------------------------------------------------------------------------------------------------------
# Everything at once


@dataclass
class Report:
    cycles: list[str]
    private: list[str]
    table: list[str]
    upward: list[str]
    unresolved: list[str]

    def sections(self) -> dict[str, list[str]]:
        return {"import cycles": self.cycles, "private names across modules": self.private,
                "modules not in exactly one row of the layer table (or stale rows)": self.table,
                "upward imports": self.upward,
                "imports of modules that do not exist": self.unresolved}


def check(pkg_dir: Path, markdown: Path) -> Report:
    """Every rule on the package under ``pkg_dir`` against the layer table of ``markdown``."""
    rows = parse_layers(markdown)
    pkg = read_package(pkg_dir, {name for row in rows for name in row.modules})
    return Report(find_cycles(pkg), sorted(set(pkg.private)), table_problems(pkg, rows, markdown),
                  upward_imports(pkg, rows), sorted(set(pkg.unresolved)))


def arch_root() -> Path:
    return Path(os.environ.get("HESSEXT_ARCH_ROOT") or REPO).resolve()


_REPORTS: dict[Path, Report] = {}


def report_for(root: Path) -> Report:
    if root not in _REPORTS:
        _REPORTS[root] = check(root / PACKAGE, root / "docs" / "internals.md")
    return _REPORTS[root]


def fail_with(title: str, messages: list[str]) -> None:
    if messages:
        pytest.fail(f"{title} ({len(messages)}), see docs/internals.md 'Layers':\n" + "\n".join(messages),
                    pytrace=False)


# ----------------------------------------------------------------------------------------------------------
# The package itself


def test_no_import_cycles():
    fail_with("import cycles among hessext modules", report_for(arch_root()).cycles)


def test_no_private_names_across_modules():
    fail_with("private names used across modules", report_for(arch_root()).private)


def test_every_module_in_one_layer():
    fail_with("modules not in exactly one row of the layer table, or rows naming no module",
              report_for(arch_root()).table)


def test_imports_only_downward():
    report = report_for(arch_root())
    fail_with("imports against the layer order", report.upward + report.unresolved)


# ----------------------------------------------------------------------------------------------------------
# The checker on synthetic packages (so that it can fail)

LAYERS_MD = """# internals

## Layers

| layer | modules | what |
|---|---|---|
| 0 low | `hessext._low`, `hessext.base` | bottom |
| 1 mid | `hessext.mid`, `hessext.sub` | a module and a package |
| 2 top | `hessext`, `hessext.top` | surfaces |

## Next section
"""


def make_tree(tmp_path: Path, files: dict[str, str], markdown: str = LAYERS_MD) -> Report:
    for rel, text in {"hessext/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "internals.md").write_text(markdown)
    (tmp_path / ".gitignore").write_text("*.so\n/hessext/_made.py\n")
    return check(tmp_path / "hessext", tmp_path / "docs" / "internals.md")


def clean_tree() -> dict[str, str]:
    return {
        "hessext/_low.py": "X = 1\n",
        "hessext/base.py": "from ._low import X\nfrom . import _low\nY = _low.X + X\n",
        "hessext/mid.py": "from . import base\nfrom .base import Y as _Y\n\ndef f():\n"
                          "    return base.Y + _Y\n",
        "hessext/sub/__init__.py": "from .inner import g\n",
        "hessext/sub/inner.py": "from .. import base, mid\nfrom ..base import Y\n\ndef g():\n"
                                "    return mid.f()\n",
        "hessext/top.py": "import hessext.sub\nfrom .sub import inner\n\ndef h():\n"
                          "    return hessext.sub.g()\n",
        "hessext/__init__.py": "from . import top\n__version__ = '1'\n",
    }


def test_checker_passes_a_clean_tree(tmp_path):
    report = make_tree(tmp_path, clean_tree())
    assert report.sections() == {key: [] for key in report.sections()}


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    files = clean_tree()
    files["hessext/base.py"] += "\ndef late():\n    from .mid import f\n    return f()\n"
    report = make_tree(tmp_path, files)
    assert len(report.cycles) == 1
    assert "cycle ['hessext.base', 'hessext.mid', 'hessext.base']" in report.cycles[0]
    assert "hessext/base.py:6: `from .mid import f`" in report.cycles[0]
    assert len(report.upward) == 1
    assert "hessext.base (layer 0 low) imports hessext.mid (layer 1 mid)" in report.upward[0]


def test_checker_counts_a_package_import_as_its_init(tmp_path):
    files = clean_tree()
    # sub -> top -> sub: top's `import hessext.sub` runs hessext/sub/__init__.py
    files["hessext/sub/__init__.py"] += "from ..top import h\n"
    report = make_tree(tmp_path, files)
    assert any("'hessext.sub', 'hessext.top', 'hessext.sub'" in message for message in report.cycles)


def test_checker_finds_private_names(tmp_path):
    files = clean_tree()
    files["hessext/base.py"] += "from ._low import _secret\n"
    files["hessext/mid.py"] += "Z = base._hidden\n"
    files["hessext/top.py"] += "W = hessext.sub.inner._cache\nV = inner.__doc__\n"
    private = make_tree(tmp_path, files).private
    assert len(private) == 3, private
    assert any("hessext/base.py:4" in m and "name '_secret' of module hessext._low" in m for m in private)
    assert any("hessext/mid.py:6" in m and "'_hidden' of module hessext.base" in m for m in private)
    assert any("hessext/top.py:6" in m and "'_cache' of module hessext.sub.inner" in m for m in private)


def test_checker_resolves_from_dot_import_to_the_package_when_not_a_module(tmp_path):
    files = clean_tree()
    files["hessext/base.py"] += "from . import __version__\n"  # a name of hessext/__init__.py, layer 2
    report = make_tree(tmp_path, files)
    assert any("hessext.base (layer 0 low) imports hessext (layer 2 top)" in m for m in report.upward)
    assert report.cycles  # hessext -> top -> sub -> inner -> base -> hessext


def test_checker_finds_upward_and_unknown_imports(tmp_path):
    files = clean_tree()
    files["hessext/sub/inner.py"] += "import hessext.top as t\nfrom ..gone import thing\n"
    report = make_tree(tmp_path, files)
    assert len(report.upward) == 1 and "hessext/sub/inner.py:6: `import hessext.top as t`" in report.upward[0]
    assert "(layer 1 mid) imports hessext.top (layer 2 top)" in report.upward[0]
    assert report.unresolved and "hessext.gone is no module" in report.unresolved[0]


def test_checker_requires_every_module_in_one_row(tmp_path):
    files = clean_tree()
    files["hessext/stray.py"] = "from . import base\n"
    twice = LAYERS_MD.replace("`hessext.top` |", "`hessext.top`, `hessext.sub.inner`, `hessext.ghost` |")
    report = make_tree(tmp_path, files, twice)
    assert len(report.table) == 3, report.table
    assert any("module hessext.stray is in no row" in m for m in report.table)
    assert any("hessext.sub.inner is in several rows" in m for m in report.table)
    assert any("internals.md:9: layer 2 top names hessext.ghost, which is no module" in m
               for m in report.table)


def test_checker_accepts_a_generated_module_named_in_the_table(tmp_path):
    files = clean_tree()
    files["hessext/base.py"] += "\ndef made():\n    from ._made import INFO\n    return INFO\n"
    generated = LAYERS_MD.replace("`hessext.base` |", "`hessext.base`, `hessext._made` |")
    report = make_tree(tmp_path, files, generated)
    assert report.sections() == {key: [] for key in report.sections()}
    report = make_tree(tmp_path, files)  # not in the table: an import of a module that does not exist
    assert report.unresolved and "hessext._made is no module" in report.unresolved[0]


def test_checker_rejects_a_malformed_table(tmp_path):
    with pytest.raises(AssertionError, match="columns 'layer' and 'modules'"):
        make_tree(tmp_path, clean_tree(), LAYERS_MD.replace("| layer | modules |", "| level | names |"))
    with pytest.raises(AssertionError, match="no section '## Layers'"):
        make_tree(tmp_path, clean_tree(), "# nothing here\n")


def main(argv: list[str]) -> int:
    """``python tests/test_architecture.py [root]``: print every violation; exit status 1 if any."""
    root = Path(argv[1]).resolve() if len(argv) > 1 else arch_root()
    report = check(root / PACKAGE, root / "docs" / "internals.md")
    total = 0
    for title, messages in report.sections().items():
        total += len(messages)
        print(f"== {title}: {len(messages)}")
        for message in messages:
            print(message)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
