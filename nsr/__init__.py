"""nsr: exact geometry of ReLU implicit shape networks.

Pipeline, one module or subpackage per stage:
``networks``, ``checkpoints`` (nsr's MLP, loaders) -> ``pl`` (the one network form,
``PLGraph``: tracer, bounds, constraint layout, encodings) -> ``training`` (shapes, samples,
losses, Lightning) and the ``train`` app -> ``extraction`` (exact complex by edge subdivision,
surfaces, tracking) and the ``extract`` app -> ``eval`` (marching cubes, metrics, pictures) and
the ``compare`` / ``demo`` apps -> ``geometry``, ``regularizers`` (differentiable geometry of the
complex fed back into training).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# Public names resolved lazily so that `import nsr` stays cheap and optional heavy
# dependencies (open3d, lightning) load only when used.
_LAZY = {
    "ReLUMLP": "nsr.networks",
    "PLNetwork": "nsr.networks",
    "as_network": "nsr.networks",
    "load_network": "nsr.networks",
    "extract_complex": "nsr.extraction.complex",
    "PolyhedralComplex": "nsr.extraction.complex",
    "extract_mesh": "nsr.extraction.surface",
    "ExactMesh": "nsr.extraction.mesh",
    "marching_cubes": "nsr.eval.marching_cubes",
    "mesh_from_complex": "nsr.extraction.polygons",
    "ExactRegularizerCallback": "nsr.regularizers",
}

# Public functions named like the submodule that defines them (`nsr.eval.marching_cubes`).
_SHADOWED = frozenset(name for name, module in _LAZY.items() if module == f"{__name__}.{name}")

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # resolved once; later lookups do not come here
        return value
    raise AttributeError(f"module 'nsr' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The ``nsr`` package: the first import of a submodule binds it as a package attribute,
    which for ``marching_cubes`` would replace the public function of the same name (then
    ``nsr.marching_cubes(...)`` fails with "'module' object is not callable"); keep the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
