"""Marching cubes baseline: scikit-image's Lewiner algorithm on a sampled grid of the network.

The grid holds ``resolution`` samples per axis *including both box faces*, so the spacing
along axis ``i`` is ``(hi_i - lo_i) / (resolution_i - 1)`` and grid index ``(0, 0, 0)`` sits at
``lo``. Vertices are returned in world coordinates; faces are oriented outward for a
signed distance that is negative inside (the gradient points outward).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import trimesh

from nsr.extraction.guards import as_bounds
from nsr.networks import PLNetwork

# Bytes held per grid sample: the float32 value grid plus scikit-image's working copy,
# and headroom for the output mesh of a busy surface.
_BYTES_PER_VOXEL = 12


# Points per evaluated chunk. Small on purpose: a chunk's activations (2 MiB at width 32 in
# float32) are recycled by the allocator, while 2^18-point chunks were mapped afresh each time
# and page faults made the 8x32 bunny's 256^3 grid 8x slower on a 2-core VM (17.2 s vs 2.1 s).
DEFAULT_CHUNK = 2**14

def _resolution3(resolution: int | Sequence[int]) -> tuple[int, int, int]:
    res = np.broadcast_to(np.asarray(resolution, dtype=np.int64), (3,))
    if np.any(res < 2):
        raise ValueError(f"resolution must be >= 2 on every axis, got {resolution}")
    return int(res[0]), int(res[1]), int(res[2])


def available_memory() -> int:
    """Bytes of memory available to new allocations (psutil, else ``/proc/meminfo``).

    Returns
    -------
    int
        Bytes; 8 GiB on a platform where neither source exists.

    Examples
    --------
    >>> from nsr.eval.marching_cubes import available_memory
    >>> available_memory() > 0
    True
    """
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3  # unknown platform: assume a modest machine


def estimate_memory(resolution: int | Sequence[int], chunk: int = DEFAULT_CHUNK, width: int = 256) -> int:
    """Bytes marching cubes needs at ``resolution``: the grid plus one evaluated chunk.

    Parameters
    ----------
    resolution : int or sequence of 3 int
        Samples per axis.
    chunk : int
        Points evaluated at once.
    width : int
        Widest hidden layer of the network.

    Returns
    -------
    int
        Estimated bytes (12 per grid sample plus one chunk's float64 activations).

    Raises
    ------
    ValueError
        If a resolution is below 2.

    Examples
    --------
    >>> from nsr.eval.marching_cubes import estimate_memory
    >>> estimate_memory(64, chunk=1024, width=32) == 64**3 * 12 + 1024 * (3 + 64) * 8
    True
    """
    nx, ny, nz = _resolution3(resolution)
    return nx * ny * nz * _BYTES_PER_VOXEL + chunk * (3 + 2 * width) * 8


def check_memory(resolution: int | Sequence[int], chunk: int = DEFAULT_CHUNK, width: int = 256) -> None:
    """Raise ``MemoryError`` when ``resolution`` needs more than half the available memory.

    Parameters
    ----------
    resolution : int or sequence of 3 int
        Samples per axis.
    chunk : int
        Points evaluated at once.
    width : int
        Widest hidden layer of the network.

    Raises
    ------
    MemoryError
        Saying how much the grid needs and how much is available.

    Examples
    --------
    >>> from nsr.eval.marching_cubes import check_memory
    >>> check_memory(32)  # fits: nothing happens
    >>> try:
    ...     check_memory(10**5)
    ... except MemoryError as err:
    ...     print("use a lower resolution" in str(err))
    True
    """
    need, avail = estimate_memory(resolution, chunk, width), available_memory()
    if need > avail // 2:
        raise MemoryError(
            f"marching cubes at resolution {resolution} needs about {need / 2**30:.1f} GiB, more "
            f"than half of the {avail / 2**30:.1f} GiB available; use a lower resolution"
        )


def _as_field(net: Any, dtype: torch.dtype, device: Any, level: float = 0.0) -> tuple[Callable, int, float]:
    """A callable ``(N, 3) -> (N,)``, its widest layer and the level to mesh in its values; plain
    callables pass through. Every network is evaluated as its :class:`nsr.pl.PLGraph` (the one
    evaluator), whose values are the output before any transform, at the matching level
    (``level=0`` of a tanh network is 0; plain MLPs have no transform)."""
    from nsr.pl.graph import PLGraph, as_graph

    if callable(net) and not isinstance(net, (PLNetwork, PLGraph, torch.nn.Module)):
        return net, 64, level
    graph = as_graph(net).to(device=device, dtype=dtype)
    if graph.in_dim != 3:
        raise ValueError(f"marching cubes needs a 3D network, got input dimension {graph.in_dim}")
    return graph, max(graph.widths, default=1), graph.level(level)


def evaluate_grid(
    field: Callable,
    bounds: np.ndarray,
    resolution: tuple[int, int, int],
    chunk: int = DEFAULT_CHUNK,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> np.ndarray:
    """Field values on a regular grid that includes both faces of the box.

    Parameters
    ----------
    field : callable
        Maps ``(N, 3)`` points (``dtype``, on ``device``) to ``(N,)`` or ``(N, 1)`` values.
    bounds : (3, 2) float ndarray
        ``[lo, hi]`` per axis.
    resolution : tuple of 3 int
        Samples per axis ``(nx, ny, nz)``.
    chunk : int
        Points per evaluated chunk (no autograd).
    dtype : torch.dtype
        Dtype of the points.
    device : torch.device or str, optional
        Device of the points.

    Returns
    -------
    (nx, ny, nz) float32 ndarray
        ``values[i, j, k] = field(x_i, y_j, z_k)``.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.marching_cubes import evaluate_grid
    >>> values = evaluate_grid(lambda p: p.norm(dim=1) - 0.5, np.array([[-1.0, 1], [-1, 1], [-1, 1]]), (3, 3, 3))
    >>> values.shape, float(values[1, 1, 1]), round(float(values[2, 1, 1]), 6)
    ((3, 3, 3), -0.5, 0.5)
    """
    axes = [
        torch.linspace(lo, hi, n, dtype=dtype, device=device)
        for (lo, hi), n in zip(bounds, resolution)
    ]
    total = int(np.prod(resolution))
    out = np.empty(total, dtype=np.float32)
    ny, nz = resolution[1], resolution[2]
    with torch.no_grad():
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total), device=device)
            i, j, k = idx // (ny * nz), (idx // nz) % ny, idx % nz
            pts = torch.stack([axes[0][i], axes[1][j], axes[2][k]], 1)
            out[start : start + len(idx)] = field(pts).reshape(-1).float().cpu().numpy()
    return out.reshape(resolution)


def _mesh_grid(values: np.ndarray, bounds: np.ndarray, level: float) -> trimesh.Trimesh:
    if not np.isfinite(values).all():
        raise ValueError("the network gives NaN or inf on the grid")
    if values.min() > level or values.max() < level:
        warnings.warn(
            f"marching cubes: the field does not cross level {level} in the box "
            f"(range [{values.min():.3g}, {values.max():.3g}]); returning an empty mesh",
            stacklevel=3,
        )
        return trimesh.Trimesh()
    spacing = (bounds[:, 1] - bounds[:, 0]) / (np.asarray(values.shape) - 1)
    from skimage.measure import marching_cubes as sk_mc

    # Our grid is indexed (x, y, z); with that layout skimage's "descent" winding gives
    # normals along +grad f, i.e. outward for negative-inside fields (checked on a plane).
    verts, faces, _, _ = sk_mc(
        values, level=level, spacing=tuple(spacing), gradient_direction="descent", method="lewiner"
    )
    return trimesh.Trimesh(verts + bounds[:, 0], faces, process=False)


def marching_cubes(
    net: Any,
    bounds: Any,
    resolution: int | Sequence[int],
    *,
    level: float = 0.0,
    chunk: int = DEFAULT_CHUNK,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    return_timings: bool = False,
) -> trimesh.Trimesh | tuple[trimesh.Trimesh, dict[str, float]]:
    """Mesh the ``level`` set of a 3D network with Lewiner marching cubes.

    ``net``: any network nsr reads (:func:`nsr.pl.as_graph`), or a callable ``(N, 3) -> (N,)``.
    ``bounds``: ``(lo, hi)`` or ``(3, 2)``. ``resolution``: samples per axis (int or 3 ints).
    Returns a :class:`trimesh.Trimesh` (vertices ``(V, 3)`` in world coordinates, faces
    ``(F, 3)`` outward for negative-inside fields), empty with a warning when the level is
    not crossed; with ``return_timings`` also ``{"eval_s", "mesh_s", "total_s"}``.
    Raises ``MemoryError`` before any work when the grid would not fit.

    Parameters
    ----------
    net : network or callable
        Any network nsr reads (:func:`nsr.pl.as_graph`) (3 inputs), or a callable
        ``(N, 3) -> (N,)``.
    bounds : (lo, hi) or (3, 2) array_like
        The box sampled; both faces are on the grid.
    resolution : int or sequence of 3 int
        Samples per axis (at least 2).
    level : float
        The level set meshed.
    chunk : int
        Points per evaluated chunk.
    dtype : torch.dtype
        Dtype the network is evaluated in.
    device : torch.device or str, optional
        Device the network is evaluated on.
    return_timings : bool
        Also return the timings.

    Returns
    -------
    mesh : trimesh.Trimesh
        Vertices ``(V, 3)`` in world coordinates, faces ``(F, 3)``.
    timings : dict of str to float
        Seconds, only with ``return_timings``.

    Raises
    ------
    MemoryError
        If the grid needs more than half the available memory.
    ValueError
        If the network is not 3D, a resolution is below 2, or the field is NaN or inf on the grid.

    Examples
    --------
    The octahedron ``|x| + |y| + |z| <= 0.5`` has volume ``4/3 * 0.5**3``; its vertices fall on
    this grid (spacing 1/16), so marching cubes recovers it up to rounding:

    >>> from nsr.eval.marching_cubes import marching_cubes
    >>> from nsr.networks import octahedron_network
    >>> mesh = marching_cubes(octahedron_network(0.5), bounds=(-1, 1), resolution=33)
    >>> mesh.is_watertight, round(float(mesh.volume), 4), round(4 / 3 * 0.5**3, 4)
    (True, 0.1667, 0.1667)
    """
    res = _resolution3(resolution)
    box = as_bounds(bounds, 3)
    field, width, level = _as_field(net, dtype, device, level)
    check_memory(res, chunk, width)
    t0 = time.perf_counter()
    values = evaluate_grid(field, box, res, chunk=chunk, dtype=dtype, device=device)
    t1 = time.perf_counter()
    mesh = _mesh_grid(values, box, level)
    t2 = time.perf_counter()
    if not return_timings:
        return mesh
    return mesh, {"eval_s": t1 - t0, "mesh_s": t2 - t1, "total_s": t2 - t0}
