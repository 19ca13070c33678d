"""Docstring coverage of the public API (issue 17): numpydoc sections, as scikit-image writes them.

For every module in ``MODULES``, each public function and class defined there, and each public
method a class defines itself, must have:

- a ``Parameters`` section when it takes arguments (besides ``self``/``cls``); a class documents
  its constructor's arguments in its own docstring (``Attributes`` is accepted for a dataclass,
  whose fields are its constructor's arguments);
- a ``Returns`` (or ``Yields``) section when it returns something: a return annotation other than
  ``None``, or, unannotated, a ``return <value>`` in its body;
- an ``Examples`` section (functions and classes; a method may rely on its class's example).

A method without a docstring that overrides a documented one (``Sphere.sdf`` of ``Shape.sdf``)
inherits that docstring, as :func:`inspect.getdoc` and the documentation tools do.

The examples themselves run under ``pytest --doctest-modules nsr`` (``make test``); this file
checks that they exist, so that coverage cannot silently regress. Extend ``MODULES`` as modules
are documented.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import textwrap
from collections.abc import Iterator

import pytest

MODULES = [
    "nsr.compare",
    "nsr.training.data",
    "nsr.demo",
    "nsr.training.losses",
    "nsr.eval.marching_cubes",
    "nsr.eval.metrics",
    "nsr.eval.render",
    "nsr.training.shapes",
    "nsr.training.lightning",
    "nsr.extraction.cells",
    "nsr.extraction.encoder_split",
    "nsr.extraction.kuhn",
    "nsr.extraction.encoder_tracking",
    "nsr.extraction.tracking",
    "nsr.regularizers",
    "nsr.pl.graph",
    "nsr.pl.bounds",
    "nsr.pl.convert",
    "nsr.pl.encoding",
    "nsr.pl.models",
    "nsr.pl.onnx_io",
    "nsr.extraction.bits",
    "nsr.extraction.guards",
    "nsr.extraction.memory",
    "nsr.extraction.tolerances",
    "nsr.limits",
    "nsr.checkpoints",
    "nsr.files",
    "nsr.geometry",
    "nsr.networks",
    "nsr.pl.layout",
    "nsr.polylines",
    "nsr.extract",
    "nsr.train",
    "nsr.extraction.complex",
    "nsr.extraction.pruning",
    "nsr.extraction.skeleton",
    "nsr.extraction.subdivide",
    "nsr.extraction.surface",
    "nsr.extraction.mesh",
    "nsr.extraction.polygons",
    "nsr.extraction.tiles",
    # packages and modules with no public names of their own (checked so that new ones are seen)
    "nsr",
    "nsr.eval",
    "nsr.extraction",
    "nsr.extraction.evaluate",
    "nsr.extraction.progress",
    "nsr.pl",
    "nsr.training",
]

# Methods whose contract is fixed by a framework and documented there, not by us.
_FRAMEWORK_METHODS = {"__init__", "forward", "extra_repr"}


def _sections(doc: str | None) -> set[str]:
    """Names of the numpydoc sections in ``doc``: a title line underlined by dashes."""
    lines = inspect.cleandoc(doc or "").splitlines()
    return {
        lines[i].strip()
        for i in range(len(lines) - 1)
        if lines[i].strip() and re.fullmatch(r"-{3,}", lines[i + 1].strip())
    }


def _takes_arguments(func) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return any(name not in ("self", "cls") for name in params)


def _returns_value(func) -> bool:
    """True when ``func`` is annotated to return something other than None, or (unannotated)
    its own body, not a nested function's, has a ``return <value>`` or a ``yield``."""
    annotation = inspect.signature(func).return_annotation
    if annotation is not inspect.Signature.empty:
        return annotation not in (None, "None", type(None))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return False
    body = tree.body[0]

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            yield child
            yield from walk(child)

    for node in walk(body):
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                return True
    return False


def _public_api(module_name: str) -> Iterator[tuple[str, object, str]]:
    """(qualified name, object, kind) for the public functions, classes and methods defined in
    the module (not imported into it); kind is "function", "class" or "method"."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj):
            yield f"{module_name}.{name}", obj, "function"
        elif inspect.isclass(obj):
            yield f"{module_name}.{name}", obj, "class"
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in _FRAMEWORK_METHODS:
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    continue  # an attribute; its docstring says what it is
                if inspect.isfunction(member):
                    yield f"{module_name}.{name}.{attr}", member, "method"


def _missing(obj: object, kind: str) -> list[str]:
    doc = inspect.getdoc(obj)  # a method overriding a documented one inherits its docstring
    sections = _sections(doc)
    missing = []
    if not (doc or "").strip():
        return ["docstring"]
    if kind == "class":
        init = obj.__init__
        # A constructor written in Python; a builtin one (an exception's) is documented by Python.
        own_init = inspect.isfunction(init) and _takes_arguments(init)
        accepted = {"Parameters", "Attributes"} if dataclasses.is_dataclass(obj) else {"Parameters"}
        if own_init and not sections & accepted:
            missing.append("Parameters")
    else:
        if _takes_arguments(obj) and "Parameters" not in sections:
            missing.append("Parameters")
        if _returns_value(obj) and not sections & {"Returns", "Yields"}:
            missing.append("Returns")
    if kind in ("function", "class") and "Examples" not in sections:
        missing.append("Examples")
    return missing


@pytest.mark.parametrize("module_name", MODULES)
def test_public_api_has_numpydoc_sections(module_name: str) -> None:
    gaps = {name: m for name, obj, kind in _public_api(module_name) if (m := _missing(obj, kind))}
    assert not gaps, "missing numpydoc sections:\n" + "\n".join(f"  {n}: {', '.join(m)}" for n, m in gaps.items())


def test_checker_sees_missing_sections() -> None:
    """The checker itself: an undocumented function fails, a documented one passes."""

    def bare(x: int) -> int:
        """Add one."""
        return x + 1

    def documented(x: int) -> int:
        """Add one.

        Parameters
        ----------
        x : int
            A number.

        Returns
        -------
        int
            ``x + 1``.

        Examples
        --------
        >>> documented(1)
        2
        """
        return x + 1

    def procedure(x: int):
        """Print.

        Parameters
        ----------
        x : int

        Examples
        --------
        >>> procedure(1)
        """
        if x:
            return
        print(x)

    assert _missing(bare, "function") == ["Parameters", "Returns", "Examples"]
    assert _missing(documented, "function") == []
    assert _missing(procedure, "function") == []


def test_every_module_of_the_package_is_checked() -> None:
    """A new module joins ``MODULES`` (private ones, ``_name``, are exempt), so coverage cannot
    silently shrink as the package grows."""
    import pkgutil

    import nsr

    found = {"nsr"} | {m.name for m in pkgutil.walk_packages(nsr.__path__, "nsr.")}
    public = {name for name in found if not any(part.startswith("_") for part in name.split("."))}
    assert sorted(public - set(MODULES)) == []
