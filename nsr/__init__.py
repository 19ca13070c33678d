"""nsr: exact geometry of ReLU implicit shape networks.

Pipeline, one module per stage:
``networks`` (ReLU MLPs and loaders) -> ``data`` (shapes, sampling) -> ``train``
(Lightning + Hydra) -> ``complex`` (exact polyhedral complex by edge subdivision)
-> ``surface`` (exact zero-level meshes, export) -> ``marching_cubes`` (baseline)
-> ``metrics`` -> ``render`` -> ``extract`` / ``compare`` (Hydra apps)
-> ``regularizers`` (differentiable complex geometry fed back into training).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names resolved lazily so that `import nsr` stays cheap and optional heavy
# dependencies (open3d, lightning) load only when used.
_LAZY = {
    "ReLUMLP": "nsr.networks",
    "PLNetwork": "nsr.networks",
    "as_network": "nsr.networks",
    "load_network": "nsr.networks",
    "extract_complex": "nsr.complex",
    "PolyhedralComplex": "nsr.complex",
    "extract_mesh": "nsr.surface",
    "ExactMesh": "nsr.surface",
    "marching_cubes": "nsr.marching_cubes",
    "mesh_from_complex": "nsr.surface",
    "ExactRegularizerCallback": "nsr.regularizers",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nsr' has no attribute {name!r}")
