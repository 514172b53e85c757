"""The op schemas are written twice; this test fails when the two copies (or the live library) disagree.

- C++: the ``m.def("...")`` calls in the ``TORCH_LIBRARY`` / ``STABLE_TORCH_LIBRARY`` (or ``_FRAGMENT``)
  block of namespace ``hessext`` under ``csrc/`` (read as text: comments removed, adjacent string literals
  joined; ``*_IMPL`` blocks only add kernels and are not read);
- Python: ``hessext._backend.SCHEMAS``, the constant the pure-Python fallback passes to ``Library.define``;
- live: ``torch.ops.hessext.<op>.default._schema`` of the library this process loaded (compiled or fallback),
  and, when the compiled extension is loaded here, the fallback's registration in a subprocess with
  ``HESSEXT_FORCE_PYTHON=1``.

Schemas are compared after ``torch._C.parse_schema``, field by field: name and overload, each argument's
name, type, default, alias annotation and keyword-only flag, each return's name, type and alias annotation.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import torch

from hessext import _backend

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
NAMESPACE = "hessext"
CPP_SUFFIXES = (".cpp", ".cc", ".cu", ".h", ".hpp", ".cuh")

_TOKENS = re.compile(r'("(?:[^"\\\n]|\\.)*")|(//[^\n]*)|(/\*.*?\*/)', re.S)
_LIBRARY = re.compile(r"\b(?:STABLE_)?TORCH_LIBRARY(?:_FRAGMENT)?\s*\(\s*" + NAMESPACE
                      + r"\s*,\s*(\w+)\s*\)\s*\{")
_LITERAL = r'"(?:[^"\\]|\\.)*"'


def strip_comments(text: str) -> str:
    """``text`` with C/C++ comments blanked (newlines kept, so line numbers stay right; strings untouched)."""
    def blank(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(1)
        return re.sub(r"[^\n]", " ", match.group(0))
    return _TOKENS.sub(blank, text)


def block_end(text: str, open_brace: int) -> int:
    """Index just past the ``}`` matching the ``{`` at ``open_brace`` (string literals skipped)."""
    depth, i = 0, open_brace
    while i < len(text):
        if text[i] == '"':
            i = re.compile(_LITERAL).match(text, i).end()
            continue
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            return i
    raise AssertionError(f"unbalanced braces after offset {open_brace}")


def cpp_schemas_in(text: str, where: str) -> list[tuple[str, str]]:
    """``(schema, "file:line")`` for every ``m.def("...")`` in a hessext library block of C++ ``text``."""
    text = strip_comments(text)
    found = []
    for library in _LIBRARY.finditer(text):
        var, start = library.group(1), library.end() - 1
        body = text[start:block_end(text, start)]
        define = re.compile(r"\b" + re.escape(var) + r"\s*\.\s*def\s*\(\s*((?:" + _LITERAL + r"\s*)+)")
        for call in define.finditer(body):
            literals = re.findall(_LITERAL, call.group(1))
            schema = "".join(bytes(lit[1:-1], "utf-8").decode("unicode_escape") for lit in literals)
            line = text.count("\n", 0, start + call.start()) + 1
            found.append((schema, f"{where}:{line}"))
    return found


def cpp_schemas(csrc: Path = CSRC) -> dict[str, tuple[str, str]]:
    """Op name -> (schema, "file:line") over every C++/CUDA source under ``csrc``; each op defined once."""
    result: dict[str, tuple[str, str]] = {}
    for path in sorted(p for p in csrc.rglob("*") if p.suffix in CPP_SUFFIXES):
        for schema, where in cpp_schemas_in(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))):
            name = op_name(schema)
            if name in result:
                raise AssertionError(f"op {name!r} is defined twice in C++: {result[name][1]} and {where}")
            result[name] = (schema, where)
    return result


def python_schemas(schemas: Mapping[str, str] | Iterable[str]) -> dict[str, tuple[str, str]]:
    """Op name -> (schema, origin) of the fallback's ``SCHEMAS`` (name -> schema dict, or schema strings)."""
    result: dict[str, tuple[str, str]] = {}
    items = schemas.items() if isinstance(schemas, Mapping) else ((None, s) for s in schemas)
    for key, schema in items:
        name = op_name(schema)
        if key is not None and key != name:
            raise AssertionError(f"_backend.SCHEMAS[{key!r}] defines op {name!r}: {schema!r}")
        if name in result:
            raise AssertionError(f"op {name!r} appears twice in _backend.SCHEMAS")
        result[name] = (schema, f"hessext/_backend.py SCHEMAS[{name!r}]")
    return result


def op_name(schema: str) -> str:
    """``name`` or ``name.overload`` of a schema string (namespace dropped)."""
    match = re.match(r"\s*(?:\w+::)?([\w.]+)\s*\(", schema)
    if match is None:
        raise AssertionError(f"not an op schema: {schema!r}")
    return match.group(1)


def parse(schema: str) -> torch.FunctionSchema:
    qualified = schema if "::" in schema.split("(", 1)[0] else f"{NAMESPACE}::{schema.strip()}"
    try:
        return torch._C.parse_schema(qualified)
    except RuntimeError as exc:
        raise AssertionError(f"schema does not parse: {schema!r}: {exc}") from None


def _alias(info) -> str:
    if info is None:
        return "none"
    return f"before={sorted(info.before_set)} after={sorted(info.after_set)} write={info.is_write}"


def describe(schema: torch.FunctionSchema) -> list[str]:
    """One line per field of ``schema`` that an op's callers depend on."""
    lines = [f"name: {schema.name}", f"overload: {schema.overload_name!r}"]
    for i, a in enumerate(schema.arguments):
        default = repr(a.default_value) if a.has_default_value() else "none"
        lines.append(f"argument {i}: name={a.name} type={a.type} default={default} "
                     f"alias={_alias(a.alias_info)} kwarg_only={a.kwarg_only}")
    lines.append(f"returns: {len(schema.returns)}")
    for i, r in enumerate(schema.returns):
        lines.append(f"return {i}: name={r.name!r} type={r.type} alias={_alias(r.alias_info)}")
    return lines


def differences(left: Mapping[str, tuple[str, str]], right: Mapping[str, tuple[str, str]]) -> list[str]:
    """Human-readable differences between two name -> (schema, origin) tables (empty when they agree)."""
    problems = []
    for name in sorted(set(left) | set(right)):
        if name not in right or name not in left:
            schema, origin = left[name] if name in left else right[name]
            problems.append(f"op {name!r} is defined only at {origin}: {schema!r}")
            continue
        (a, where_a), (b, where_b) = left[name], right[name]
        fields_a, fields_b = describe(parse(a)), describe(parse(b))
        if fields_a != fields_b or str(parse(a)) != str(parse(b)):
            changed = [f"    {x}\n != {y}" for x, y in zip(fields_a, fields_b) if x != y]
            if len(fields_a) != len(fields_b):
                changed.append(f"    {len(fields_a)} fields != {len(fields_b)} fields")
            header = f"op {name!r} differs:\n  {where_a}: {a!r}\n  {where_b}: {b!r}\n"
            problems.append(header + "\n".join(changed))
    return problems


def live_schemas() -> dict[str, tuple[str, str]]:
    """Op name -> (schema, origin) of the ``hessext`` ops registered in this process."""
    prefix = NAMESPACE + "::"
    names = [n[len(prefix):] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)]
    result = {}
    for name in names:
        base, _, overload = name.partition(".")
        packet = getattr(getattr(torch.ops, NAMESPACE), base)
        result[name] = (str(getattr(packet, overload or "default")._schema),
                        f"torch.ops.{NAMESPACE}.{base}.{overload or 'default'} ({_backend.BACKEND} backend)")
    return result


def fail_on(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{what} (keep csrc/hessext.cpp and hessext/_backend.py SCHEMAS in step):\n"
                    + "\n".join(problems), pytrace=False)


# ----------------------------------------------------------------------------------------------------------


def test_both_sources_define_ops():
    cpp, py = cpp_schemas(), python_schemas(_backend.SCHEMAS)
    assert cpp, f"no m.def(...) in a TORCH_LIBRARY({NAMESPACE}, m) block under {CSRC}"
    assert py, "hessext._backend.SCHEMAS is empty"


def test_cpp_and_python_schemas_agree():
    fail_on(differences(cpp_schemas(), python_schemas(_backend.SCHEMAS)), "C++ and Python op schemas differ")


def test_live_library_matches_the_sources():
    live = live_schemas()
    source = cpp_schemas() if _backend.COMPILED else python_schemas(_backend.SCHEMAS)
    fail_on(differences(source, live), f"the live library ({_backend.BACKEND}) differs from its source")


@pytest.mark.skipif(not _backend.COMPILED, reason="the live library is the Python fallback already")
def test_python_fallback_registration_matches_cpp():
    code = ("import json, torch, hessext\n"
            "from hessext import _backend\n"
            "assert not _backend.COMPILED\n"
            f"ns = torch.ops.{NAMESPACE}\n"
            "print(json.dumps({n: str(getattr(ns, n).default._schema) for n in _backend.SCHEMAS}))\n")
    env = {**os.environ, "HESSEXT_FORCE_PYTHON": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    registered = {name: (schema, "Python fallback, registered") for name, schema in
                  json.loads(out.stdout.strip().splitlines()[-1]).items()}
    fail_on(differences(cpp_schemas(), registered), "the Python fallback registers other schemas than C++")


# ----------------------------------------------------------------------------------------------------------
# The comparison itself must be able to fail.

CPP_SAMPLE = """
// m.def("commented(Tensor x) -> Tensor");
TORCH_LIBRARY_IMPL(hessext, CPU, m) { m.impl("reorthogonalize", &f); }
STABLE_TORCH_LIBRARY(hessext, m) {
  m.def("reorthogonalize(Tensor w, Tensor basis, int passes=2) "
        "-> (Tensor, Tensor, Tensor)");  /* m.def("also_commented() -> ()"); */
  m.def("rademacher_(Tensor(a!) out, int seed, int offset) -> ()");
}
TORCH_LIBRARY(other, m) { m.def("elsewhere(Tensor x) -> Tensor"); }
"""
PY_SAMPLE = {
    "reorthogonalize": "reorthogonalize(Tensor w, Tensor basis, int passes=2) -> (Tensor, Tensor, Tensor)",
    "rademacher_": "rademacher_(Tensor(a!) out, int seed, int offset) -> ()",
}


def sample_cpp(text: str = CPP_SAMPLE) -> dict[str, tuple[str, str]]:
    return {op_name(s): (s, where) for s, where in cpp_schemas_in(text, "sample.cpp")}


def test_extraction_reads_only_the_definitions():
    cpp = sample_cpp()
    assert sorted(cpp) == ["rademacher_", "reorthogonalize"]
    assert cpp["reorthogonalize"] == (PY_SAMPLE["reorthogonalize"], "sample.cpp:5")
    assert differences(cpp, python_schemas(PY_SAMPLE)) == []


@pytest.mark.parametrize("old, new, field", [
    ("passes=2", "passes=3", "default=3"),
    ("passes=2", "passed=2", "name=passed"),
    ("int seed", "float seed", "type=float"),
    ("Tensor(a!) out", "Tensor(a) out", "write=False"),
    ("Tensor(a!) out", "Tensor out", "alias=none"),
    ("offset) -> ()", "offset) -> Tensor", "returns: 1"),
    ("Tensor, Tensor, Tensor)", "Tensor, Tensor)", "returns: 2"),
    ("int seed, int offset", "int seed, *, int offset", "kwarg_only=True"),
    ('rademacher_(', 'rademacher(', "defined only at"),
])
def test_a_changed_schema_is_caught(old, new, field):
    changed = sample_cpp(CPP_SAMPLE.replace(old, new, 1))
    problems = differences(changed, python_schemas(PY_SAMPLE))
    assert problems and field in "\n".join(problems), problems
