"""Shape sources and training samples for implicit surface networks.

A *source* puts a shape into the training box ``[-box, box]^D`` (default ``box = 0.5``) and
answers, in those normalized coordinates, signed distances (negative inside) and oriented
surface samples. Three kinds:

* :class:`AnalyticSource`: a built-in :mod:`nsr.shapes` shape (exact SDF), given in box
  coordinates already (identity transform).
* :class:`MeshSource`: OBJ, PLY, STL, OFF, GLB through trimesh; the mesh is scaled so that its
  bounding box is centered and its longest side spans ``[-fit, fit]`` (default 0.45).
  Signed distance = open3d ``RaycastingScene`` unsigned distance, with the sign from
  ``compute_occupancy``: ray-parity along one ray for watertight meshes; for open
  (non-watertight) meshes a majority vote of the parities along ``n_rays`` (odd) random rays,
  which gives a sensible inside/outside for meshes with small holes.
* :class:`PointCloudSource`: oriented point clouds (PLY, PCD, XYZ/XYZN via open3d); only
  surface points and normals are known, the SDF off the surface is not (``NaN`` targets).

Every source stores its transform: ``normalized = (x - center) * scale`` and
:meth:`ShapeSource.to_shape_units` maps normalized vertices back to the shape's own units.

Samples (:func:`sample_points`): surface points with normals, near-surface points (surface +
Gaussian noise of each ``sigma``, box-relative: ``sigma * 2 * box``) and uniform points in
the box, with given fractions. Defaults, in the spirit of DeepSDF / instant-ngp: 0.2 surface,
0.5 near-surface split evenly over ``sigma in {0.01, 0.003}``, 0.3 uniform.
open3d is imported lazily: ``import nsr.data`` and analytic shapes work without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr.shapes import Shape

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
POINT_CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".pts")


class ShapeError(ValueError):
    """A shape source that cannot be trained on (missing file, empty, NaN, ...)."""


def _open3d() -> Any:
    try:
        import open3d
    except (ImportError, OSError) as err:  # OSError: missing libusb on some systems
        raise ImportError(f"this feature needs open3d, which cannot be imported: {err}") from err
    return open3d


class ShapeSource:
    """Base class: a shape in normalized training-box coordinates.

    ``center`` ``(D,) float`` and ``scale`` map shape units to box units:
    ``normalized = (x - center) * scale``.
    """

    dim: int = 3
    has_sdf: bool = True
    has_normals: bool = True

    def __init__(self, center: np.ndarray | None = None, scale: float = 1.0) -> None:
        self.center = np.zeros(self.dim) if center is None else np.asarray(center, dtype=np.float64)
        self.scale = float(scale)

    def signed_distance(self, x: Tensor) -> Tensor:
        """Box-unit signed distance, negative inside, ``(N, D) -> (N,)``; ``NaN`` if unknown."""
        raise NotImplementedError

    def sample_surface(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` surface points ``(n, D)`` and unit outward normals ``(n, D)``, float32."""
        raise NotImplementedError

    def to_shape_units(self, vertices: np.ndarray | Tensor) -> np.ndarray:
        """Normalized ``(N, D)`` vertices back to the shape's own units, ``(N, D) float64``."""
        v = (
            vertices.detach().cpu().numpy()
            if isinstance(vertices, Tensor)
            else np.asarray(vertices)
        )
        return v.astype(np.float64) / self.scale + self.center

    def from_shape_units(self, points: np.ndarray) -> np.ndarray:
        """Shape-unit ``(N, D)`` points to normalized box coordinates."""
        return (np.asarray(points, dtype=np.float64) - self.center) * self.scale

    def transform(self) -> dict[str, Any]:
        """The stored transform as plain data (for checkpoints and ``transform.json``)."""
        return {"center": self.center.tolist(), "scale": self.scale}


def fit_transform(points: np.ndarray, fit: float) -> tuple[np.ndarray, float]:
    """Center and scale putting the bounding box of ``(N, D)`` points into ``[-fit, fit]^D``."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise ShapeError("the shape has zero size (all points coincide); cannot normalize it")
    return (lo + hi) / 2.0, 2.0 * fit / extent


def _check_points(points: np.ndarray, what: str) -> None:
    if points.ndim != 2 or points.shape[0] == 0:
        raise ShapeError(f"{what} is empty (no points / vertices)")
    if not np.isfinite(points).all():
        raise ShapeError(f"{what} has NaN or infinite coordinates")


# ----------------------------------------------------------------------------- analytic


class AnalyticSource(ShapeSource):
    """A built-in analytic shape (:mod:`nsr.shapes`), exact SDF, identity transform.

    Surface samples come from projecting uniform points onto the zero level set along the
    SDF gradient (``x <- x - f(x) grad f / |grad f|^2``, a few steps; points that do not
    converge to ``|f| < tol`` are dropped), normals are the normalized gradient there.
    """

    def __init__(self, shape: Shape, box: float = 0.5) -> None:
        if not isinstance(shape, Shape):
            raise ShapeError(f"expected an nsr.shapes.Shape, got {type(shape).__name__}")
        self.dim = shape.dim
        super().__init__()
        self.shape, self.box = shape, float(box)
        pts, _ = self.sample_surface(64, torch.Generator().manual_seed(0))
        if pts.shape[0] == 0:
            raise ShapeError(f"the shape {type(shape).__name__} has no surface inside the box")

    def signed_distance(self, x: Tensor) -> Tensor:
        return self.shape.sdf(x.double()).to(x.dtype)

    def _project(self, x: Tensor, steps: int = 6) -> tuple[Tensor, Tensor, Tensor]:
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            f = self.shape.sdf(x)
            (g,) = torch.autograd.grad(f.sum(), x)
            x = x - (f / (g * g).sum(-1).clamp(min=1e-12))[:, None] * g
        x = x.detach().requires_grad_(True)
        f = self.shape.sdf(x)
        (g,) = torch.autograd.grad(f.sum(), x)
        return x.detach(), f.detach(), g

    def sample_surface(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        found_x, found_n, total = [], [], 0
        for _ in range(20):
            if total >= n:
                break
            x0 = (
                torch.rand(2 * n + 64, self.dim, generator=gen, dtype=torch.float64) * 2 - 1
            ) * self.box
            x, f, g = self._project(x0)
            gn = torch.linalg.vector_norm(g, dim=-1)
            ok = (f.abs() < 1e-6) & (x.abs() <= self.box).all(-1) & (gn > 0.5)
            found_x.append(x[ok])
            found_n.append(g[ok] / gn[ok, None])
            total += int(ok.sum())
        pts = torch.cat(found_x)[:n]
        nrm = torch.cat(found_n)[:n]
        return pts.float(), nrm.float()


# ----------------------------------------------------------------------------- meshes


def load_mesh(path: str | Path) -> Any:
    """Read a triangle mesh with trimesh (scenes, e.g. GLB, are concatenated).

    Raises :class:`FileNotFoundError` or :class:`ShapeError` with the reason.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:
        raise ShapeError(f"{path}: cannot be read as a mesh ({type(err).__name__}: {err})") from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ShapeError(f"{path}: the mesh is empty (no triangles)")
    _check_points(np.asarray(mesh.vertices), f"{path}")
    return mesh


class MeshSource(ShapeSource):
    """Triangle mesh file, normalized so its bounding box fits ``[-fit, fit]^3``, centered.

    Sign: watertight meshes use open3d's ray parity (``compute_occupancy``, 1 ray); open meshes
    take the majority of ``n_rays`` (odd) random-ray parities. Distances from open3d's
    ``compute_distance`` (vectorized, multithreaded).
    """

    dim = 3

    def __init__(self, path: str | Path, fit: float = 0.45, n_rays: int = 11) -> None:
        self.path = Path(path)
        mesh = load_mesh(self.path)
        center, scale = fit_transform(np.asarray(mesh.vertices, dtype=np.float64), fit)
        super().__init__(center, scale)
        self.vertices = self.from_shape_units(np.asarray(mesh.vertices)).astype(np.float32)
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        self.watertight = bool(mesh.is_watertight)
        self.n_rays = 1 if self.watertight else int(n_rays) | 1
        v = torch.from_numpy(self.vertices)
        tri = v[torch.from_numpy(self.faces)]  # (F, 3, 3)
        cross = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        self._areas = torch.linalg.vector_norm(cross.double(), dim=-1)
        if not self._areas.sum() > 0:
            raise ShapeError(f"{self.path}: the mesh has zero surface area")
        self._face_normals = cross / torch.linalg.vector_norm(cross, dim=-1, keepdim=True).clamp(
            min=1e-20
        )
        self._tri = tri
        self._scene: Any = None

    def __getstate__(self) -> dict[str, Any]:  # open3d scenes do not pickle (DDP spawn)
        state = self.__dict__.copy()
        state["_scene"] = None
        return state

    def _raycasting_scene(self) -> Any:
        if self._scene is None:
            o3d = _open3d()
            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(
                o3d.core.Tensor(self.vertices, dtype=o3d.core.float32),
                o3d.core.Tensor(self.faces.astype(np.uint32), dtype=o3d.core.uint32),
            )
            self._scene = scene
        return self._scene

    def signed_distance(self, x: Tensor) -> Tensor:
        o3d = _open3d()
        scene = self._raycasting_scene()
        q = o3d.core.Tensor(x.detach().cpu().float().numpy())
        dist = scene.compute_distance(q).numpy()
        occ = scene.compute_occupancy(q, nsamples=self.n_rays).numpy()
        sdf = np.where(occ > 0.5, -dist, dist)
        return torch.from_numpy(sdf).to(device=x.device, dtype=x.dtype)

    def sample_surface(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        face = torch.multinomial(self._areas, n, replacement=True, generator=gen)
        u = torch.rand(n, 2, generator=gen)
        su = u[:, 0].sqrt()
        bary = torch.stack([1 - su, su * (1 - u[:, 1]), su * u[:, 1]], dim=1)  # (n, 3)
        pts = (bary[:, :, None] * self._tri[face]).sum(1)
        return pts, self._face_normals[face]


# ----------------------------------------------------------------------------- point clouds


def _xyz_format(path: Path) -> str:
    with path.open() as fh:
        first = fh.readline().split()
    return "xyzn" if len(first) >= 6 else "xyz"


def load_point_cloud(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Points ``(N, 3)`` and normals ``(N, 3)`` or ``None`` of a PLY/PCD/XYZ(N) file (open3d)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    o3d = _open3d()
    fmt = _xyz_format(path) if path.suffix.lower() in (".xyz", ".xyzn", ".pts") else "auto"
    try:
        pcd = o3d.io.read_point_cloud(str(path), format=fmt)
    except Exception as err:
        raise ShapeError(f"{path}: cannot be read as a point cloud ({err})") from err
    pts = np.asarray(pcd.points, dtype=np.float64)
    if pts.shape[0] == 0:
        raise ShapeError(f"{path}: the point cloud is empty (or unreadable)")
    _check_points(pts, str(path))
    normals = np.asarray(pcd.normals, dtype=np.float64) if pcd.has_normals() else None
    return pts, normals


class PointCloudSource(ShapeSource):
    """Oriented point cloud: surface samples and normals only, no SDF off the surface.

    ``require_normals`` (default) makes a cloud without normals an error at load time.
    """

    dim = 3
    has_sdf = False

    def __init__(self, path: str | Path, fit: float = 0.45, require_normals: bool = True) -> None:
        self.path = Path(path)
        pts, normals = load_point_cloud(self.path)
        if normals is None and require_normals:
            raise ShapeError(
                f"{self.path}: the point cloud has no normals, but normals are needed "
                "(normal loss); give an oriented cloud or set require_normals=false"
            )
        center, scale = fit_transform(pts, fit)
        super().__init__(center, scale)
        self.has_normals = normals is not None
        self.points = torch.from_numpy(self.from_shape_units(pts)).float()
        if normals is not None:
            if not np.isfinite(normals).all():
                raise ShapeError(f"{self.path}: normals contain NaN")
            nrm = torch.from_numpy(normals).float()
            self.normals = nrm / torch.linalg.vector_norm(nrm, dim=-1, keepdim=True).clamp(
                min=1e-12
            )
        else:
            self.normals = torch.full_like(self.points, float("nan"))

    def signed_distance(self, x: Tensor) -> Tensor:
        return torch.full(x.shape[:1], float("nan"), dtype=x.dtype, device=x.device)

    def sample_surface(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, self.points.shape[0], (n,), generator=gen)
        return self.points[idx], self.normals[idx]


# ----------------------------------------------------------------------------- sampling


def make_source(
    kind: str,
    shape: Shape | None = None,
    path: str | Path | None = None,
    box: float = 0.5,
    fit: float = 0.45,
    n_rays: int = 11,
    require_normals: bool = True,
) -> ShapeSource:
    """Build and validate a source; every bad input raises here, before any training."""
    if not box > 0:
        raise ShapeError(f"the training box half-size must be > 0, got {box}")
    if not 0 < fit <= box:
        raise ShapeError(f"fit must be in (0, box={box}], got {fit}")
    if kind == "analytic":
        if shape is None:
            raise ShapeError("data.kind=analytic needs data.shape")
        return AnalyticSource(shape, box)
    if path is None or str(path) in ("", "???"):
        raise ShapeError(f"data.kind={kind} needs data.path")
    if kind == "mesh":
        return MeshSource(path, fit, n_rays)
    if kind == "pointcloud":
        return PointCloudSource(path, fit, require_normals)
    raise ShapeError(f"unknown data.kind {kind!r}: use analytic, mesh or pointcloud")


def split_counts(n: int, fractions: dict[str, float], n_sigmas: int) -> dict[str, int]:
    """Points per kind (``surface``, ``near``, ``uniform``) for a batch of ``n``."""
    total = sum(float(fractions.get(k, 0.0)) for k in ("surface", "near", "uniform"))
    if not total > 0 or any(float(v) < 0 for v in fractions.values()):
        raise ValueError(f"sampling fractions must be >= 0 with a positive sum, got {fractions}")
    n_surf = int(round(n * fractions.get("surface", 0.0) / total))
    n_near = int(round(n * fractions.get("near", 0.0) / total)) if n_sigmas else 0
    n_near -= n_near % max(n_sigmas, 1)
    return {"surface": max(n_surf, 1), "near": n_near, "uniform": max(n - n_surf - n_near, 0)}


def sample_points(
    source: ShapeSource,
    counts: dict[str, int],
    sigmas: Sequence[float],
    box: float,
    gen: torch.Generator,
) -> dict[str, Tensor]:
    """One set of training samples, float32.

    Returns ``surface`` ``(S, D)``, ``normals`` ``(S, D)``, ``points`` ``(Q, D)`` (near-surface
    then uniform) and ``sdf`` ``(Q,)`` (``NaN`` where unknown).
    """
    d = source.dim
    n_near, n_uni = counts["near"], counts["uniform"]
    surf, nrm = source.sample_surface(counts["surface"] + n_near, gen)
    surf, nrm, base = surf[: counts["surface"]], nrm[: counts["surface"]], surf[counts["surface"] :]
    if n_near:
        sig = torch.tensor(list(sigmas), dtype=torch.float32).repeat_interleave(
            n_near // len(sigmas)
        )
        near = base + torch.randn(n_near, d, generator=gen) * sig[:, None] * (2 * box)
        near = near.clamp(-box, box)
    else:
        near = torch.zeros(0, d)
    uni = (torch.rand(n_uni, d, generator=gen) * 2 - 1) * box
    pts = torch.cat([near, uni]).float()
    sdf = source.signed_distance(pts) if pts.shape[0] else torch.zeros(0)
    return {"surface": surf.float(), "normals": nrm.float(), "points": pts, "sdf": sdf.float()}


def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Deterministic generator for batch ``index`` of ``epoch`` (independent of process count)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
