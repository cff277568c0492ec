"""The shape of the code: a package imports only packages below it, no function runs to 100 lines
and no file to 500.

    core  <  data  <  models  <  train  <  export  <  compress  <  app  <  bench

core holds what every stage shares (artifacts, CLI and config helpers); data the facts, the Plus
Codes, the prompt format and the corpus; models tokenizers, loading, shapes, checkpoints and
generation (backends/ included); train the one training loop, its losses and the proxy teacher;
export the file formats; compress the surgery, evaluation and the pipeline; app the page and API;
bench the benchmarks, which drive all of them and render reports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("core", "data", "models", "train", "export", "compress", "app", "bench")


def _modules():
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every project module `path` imports, at any depth of the file (function bodies too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in ORDER]


def test_every_package_imports_only_packages_below_it():
    wrong = []
    for package, path in _modules():
        rank = ORDER.index(package)
        for line, name in _imports(path):
            target = name.split(".")[0]
            if ORDER.index(target) > rank:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({package} sits below {target})")
    assert not wrong, "imports against the declared order:\n" + "\n".join(wrong)


def test_the_layering_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from compress.run import main\n")
    assert _imports(bad) == [(2, "compress.run")]


def test_no_module_of_ours_sits_outside_the_declared_packages():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages - {"tests"} == set(ORDER)


def test_no_function_of_a_hundred_lines():
    long = []
    for _, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 100:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "split these:\n" + "\n".join(long)


# Files over the limit that are another change's to split; an entry must go once its file is short.
SPLIT_PENDING: set[str] = set()


def test_no_file_of_five_hundred_lines():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines()) for _, path in _modules()}
    long = [f"{name} ({lines} lines)" for name, lines in sizes.items() if lines >= 500 and name not in SPLIT_PENDING]
    assert not long, "split these:\n" + "\n".join(long)
    assert all(sizes.get(name, 0) >= 500 for name in SPLIT_PENDING), "short now: take it out of SPLIT_PENDING"
