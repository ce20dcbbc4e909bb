"""The public API of a repository's Python sources, read with :mod:`ast`: nothing is imported or executed.

A module lists its public classes (with bases, methods and nested classes) and functions, each with its full
signature and docstring; ``__all__``, when it is a literal list, decides what is public.
"""

from __future__ import annotations

import ast
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from quantapilot.docs.scan import Reader
from quantapilot.repos.files import EntryKind


@dataclass(slots=True)
class PyFunction:
    """A public function or method: name, full signature (decorators included) and docstring."""

    name: str
    signature: str
    doc: str


@dataclass(slots=True)
class PyClass:
    """A public class: signature with its bases, docstring, public methods and nested classes (two levels)."""

    name: str
    signature: str
    doc: str
    methods: list[PyFunction] = field(default_factory=list)
    classes: list[PyClass] = field(default_factory=list)


@dataclass(slots=True)
class PyModule:
    """A Python module as documented: dotted name, source path, page slug, docstring and public API."""

    name: str
    path: str
    slug: str = ""
    doc: str = ""
    classes: list[PyClass] = field(default_factory=list)
    functions: list[PyFunction] = field(default_factory=list)


_PUBLIC_DUNDERS = frozenset({"__init__", "__call__"})


def _decorators(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    return "".join(f"@{ast.unparse(d)}\n" for d in node.decorator_list)


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> PyFunction:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    signature = f"{_decorators(node)}{prefix} {node.name}({ast.unparse(node.args)}){returns}"
    return PyFunction(node.name, signature, ast.get_docstring(node) or "")


def _class(node: ast.ClassDef, depth: int = 0) -> PyClass:
    bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
    signature = f"{_decorators(node)}class {node.name}" + (f"({', '.join(bases)})" if bases else "")
    cls = PyClass(node.name, signature, ast.get_docstring(node) or "")
    for child in node.body:
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            if not child.name.startswith("_") or child.name in _PUBLIC_DUNDERS:
                cls.methods.append(_function(child))
        elif isinstance(child, ast.ClassDef) and depth < 2 and not child.name.startswith("_"):
            cls.classes.append(_class(child, depth + 1))
    return cls


def _exported_names(tree: ast.Module) -> set[str] | None:
    """Names listed in a literal ``__all__``, or ``None`` when the module has none."""
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and isinstance(
            value, ast.List | ast.Tuple
        ):
            return {e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return None


def _parse_module(module: PyModule, source: bytes) -> None:
    """Fill ``module`` with the docstring and public API of ``source``.

    Raises:
        SyntaxError: The source is not valid Python.
        ValueError: The source holds NUL bytes.
    """
    with warnings.catch_warnings():
        # Odd escapes in the documented code raise warnings at parse time; they are the code's business.
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(source, filename=module.path)
    exported = _exported_names(tree)

    def public(name: str) -> bool:
        return name in exported if exported is not None else not name.startswith("_")

    module.doc = ast.get_docstring(tree) or ""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and public(node.name):
            module.classes.append(_class(node))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and public(node.name):
            module.functions.append(_function(node))


def _module_names(paths: Sequence[str]) -> dict[str, str]:
    """Dotted module names for Python files; ``src/`` layouts drop the ``src`` prefix unless names clash."""

    def dotted(path: str, *, strip_src: bool) -> str:
        parts = path[: -len(PurePosixPath(path).suffix)].split("/")
        if strip_src and len(parts) > 1 and parts[0] == "src":
            parts = parts[1:]
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        return ".".join(parts)

    names = {p: dotted(p, strip_src=True) for p in paths}
    counts = Counter(names.values())
    for p in paths:
        if counts[names[p]] > 1:
            # e.g. src/pkg/mod.py and pkg/mod.py, or pkg/a.py and pkg/a/__init__.py: spell the path out.
            names[p] = ".".join(p[: -len(PurePosixPath(p).suffix)].split("/"))
    return names


def read_modules(reader: Reader, files: Sequence[str]) -> tuple[list[PyModule], list[tuple[str, str]]]:
    """Read the API of every Python file among ``files``; a linked ``.py`` is recorded on ``reader``, not read.

    Args:
        reader: The repository.
        files: The documented files.

    Returns:
        The modules sorted by name and path (their ``slug`` not yet set), and the files that could not be
        parsed with the reason.
    """
    py_files = [f for f in files if f.endswith((".py", ".pyi"))]
    for rel in py_files:
        if reader.repo.entries[rel].kind is not EntryKind.FILE:
            reader.data(rel)  # records why a link is not read
    py_files = [f for f in py_files if reader.repo.entries[f].kind is EntryKind.FILE]
    # A stub beside its module documents the same thing; prefer the .py.
    py_set = set(py_files)
    py_files = [f for f in py_files if not (f.endswith(".pyi") and f[:-1] in py_set)]
    names = _module_names(py_files)
    modules: list[PyModule] = []
    failed: list[tuple[str, str]] = []
    for rel in py_files:
        module = PyModule(name=names[rel], path=rel)
        source = reader.data(rel)
        if source is None:
            continue
        try:
            _parse_module(module, source)
        except SyntaxError as exc:
            failed.append((rel, f"syntax error at line {exc.lineno}: {exc.msg}"))
            continue
        except (ValueError, RecursionError, MemoryError) as exc:
            failed.append((rel, f"could not be read as Python ({type(exc).__name__})"))
            continue
        modules.append(module)
    modules.sort(key=lambda m: (m.name, m.path))
    return modules, failed
