"""The version of the code that decides a run's result, part of its identity (run-id).

A run's result is decided by the training loop (suite/train.py), its task family's module, its method's module,
and whatever those import from this package: the model, the data code, the compressor registry and accounting,
the config. The version is a hash of the syntax trees (without docstrings: comments, docstrings and formatting
change no version) of exactly those files, found by following the package's own imports (``import`` statements, read with ``ast``) from the three starting modules. Modules that only look at
results (report, figures, sweeps, benchmarks, the CLI) are never imported by them, and the ones train() imports
only to write and show a run (``VIEWS``: the record format, W&B, progress, atomic writes) are not followed, so
changing them never retrains anything; a change in suite/compressors/lowrank.py changes the version of lmf, svd, hmd and the doped
methods (which import it) but not of kp. Modules found only by discovery (every method module, every family
module) are not followed: each run depends on its own method and family.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = __name__.split(".")[0]
ROOTS = (f"{PACKAGE}.train",)
"""Modules every run depends on, besides its family's and its method's."""
VIEWS = (
    f"{PACKAGE}.record",
    f"{PACKAGE}.store",
    f"{PACKAGE}.provenance",
    f"{PACKAGE}.tracking",
    f"{PACKAGE}.files",
    f"{PACKAGE}.publish",
    f"{PACKAGE}.behaviour",
    f"{PACKAGE}.plugins",
    f"{PACKAGE}.export",
)
"""Modules train() imports that only write, find, log or show a run (the record's file format, where records
live, provenance, W&B and CSV logs, progress lines, atomic file writes), judge whether a record or a checkpoint
is current (published records, behaviour fingerprints), load plugins (whose own modules are followed) or write
the exported file: they never decide a result, so they are not followed."""


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _is_package(name: str, path: Path) -> bool:
    return path.name == "__init__.py"


@functools.lru_cache(maxsize=512)
def _parse(path: str, mtime_ns: int) -> ast.Module:
    return ast.parse(Path(path).read_text(), filename=path)


def _imports(name: str, path: Path) -> set[str]:
    """Modules of this package that ``name`` (at ``path``) imports: ``from .x import y`` gives x, and x.y when y
    is a module of its own."""
    tree = _parse(str(path), path.stat().st_mtime_ns)
    package = name if _is_package(name, path) else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    found = set()
    ours = {PACKAGE, name.split(".")[0]}  # the suite's modules, and a plugin's own
    for mod in out:
        if mod.split(".")[0] in ours and _module_file(mod) is not None:
            found.add(mod)
            parts = mod.split(".")  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return found


def closure(modules: tuple[str, ...]) -> dict[str, Path]:
    """The modules reachable from ``modules`` through this package's imports, with their files."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or name == PACKAGE or name in VIEWS:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(name, path))
    return seen


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` without docstrings (a leading string of a module, class or function body)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def source_text(path: Path) -> str:
    """What of a module's source can change a result: its syntax tree without docstrings, so that comments,
    docstrings and formatting never change a version (a rename or a move still does; see suite.behaviour)."""
    return _source_text(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=512)
def _source_text(path: str, mtime_ns: int) -> str:
    tree = _strip_docstrings(ast.parse(Path(path).read_text(), filename=path))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def files_version(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + source_text(files[name]).encode() + b"\0")
    return h.hexdigest()[:12]


def _starts(family: str, method: str) -> tuple[str, ...]:
    from . import tasks
    from .compressors import registry

    entry = registry.get(method)
    return (*ROOTS, type(tasks.get(family)).__module__, entry.config.__module__, entry.apply.__module__)


@functools.cache
def code_version(family: str, method: str) -> str:
    """The version of the code deciding a run of ``method`` on a task of ``family`` (a 12-hex-digit hash)."""
    return files_version(closure(_starts(family, method)))


def code_files(family: str, method: str) -> list[str]:
    """The files ``code_version`` hashes, relative to the package's parent folder (for docs and tests)."""
    root = Path(__file__).resolve().parent.parent
    out = []
    for path in closure(_starts(family, method)).values():
        p = path.resolve()
        out.append(str(p.relative_to(root)) if p.is_relative_to(root) else str(p))
    return sorted(out)
