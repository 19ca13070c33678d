"""Shape sources and training samples for implicit surface networks.

A *source* puts a shape into the training box ``[-box, box]^D`` (default ``box = 0.5``) and
answers, in those normalized coordinates, signed distances (negative inside) and oriented
surface samples. Three kinds:

* :class:`AnalyticSource`: a built-in :mod:`nsr.training.shapes` shape (exact SDF), given in box
  coordinates already (identity transform).
* :class:`MeshSource`: OBJ, PLY, STL, OFF, GLB through trimesh; the mesh is scaled so that its
  bounding box is centered and its longest side spans ``[-fit, fit]`` (default 0.45).
  Signed distance = open3d ``RaycastingScene`` unsigned distance with a sign chosen by
  ``sign`` (``data.sign``):

  - ``auto`` (default): watertight meshes take the ray parity of open3d's
    ``compute_occupancy`` (one ray). Open meshes are first *checked*: the generalized winding
    number (:func:`winding_numbers`) at probe points near the surface and in the box says
    whether an inside exists at all. Where it is far from 0 and 1 (``|w|`` in ``[0.2, 0.8]``)
    on more than ``max_ambiguous`` of the probes (an open square, a hemisphere, a car body
    with its windows open) the inside is undefined and the source refuses, naming the file,
    the measured fraction and the options below. Meshes with small holes (a scan's base)
    pass; their holes are closed by flat caps (``holes``, :func:`cap_holes`), and inside is a
    majority vote of ``n_rays`` (odd) ray parities, each ray in a uniformly random direction
    (so the vote follows the winding number, see ``MeshSource._ray_vote``).
  - ``rays``: that majority vote without the check (the user vouches for the mesh).
  - ``winding``: inside where the generalized winding number has ``|w| >= 0.5`` (Jacobson et
    al. 2013); robust to holes, cracks and duplicated seams. libigl's fast winding number
    when ``import igl`` works (``winding_backend: auto``/``igl``), else the exact solid-angle
    sum over all triangles, vectorized in chunks: O(points x faces), fine for meshes up to
    ~10^4 faces, slow beyond (install ``libigl``).
  - ``shell``: a closed shell of thickness ``shell_thickness`` (box units) around the surface,
    ``sdf = udf - thickness / 2``: an honest closed shape for an open surface whose inside
    does not exist (the network learns the shell, not a guessed solid).
* :class:`PointCloudSource`: oriented point clouds (PLY, PCD, XYZ/XYZN via open3d); only
  surface points and normals are known, the SDF off the surface is not (``NaN`` targets).

Every source stores its transform: ``normalized = (x - center) * scale`` and
:meth:`ShapeSource.to_shape_units` maps normalized vertices back to the shape's own units.

Samples (:func:`sample_points`): surface points with normals, near-surface points (surface +
Gaussian noise of each ``sigma``, box-relative: ``sigma * 2 * box``) and uniform points in
the box, with given fractions. Defaults, in the spirit of DeepSDF / instant-ngp: 0.2 surface,
0.5 near-surface split evenly over ``sigma in {0.01, 0.003}``, 0.3 uniform.
open3d is imported lazily: ``import nsr.training.data`` and analytic shapes work without it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr.training.shapes import Shape

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
POINT_CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".pts")
SIGN_MODES = ("auto", "rays", "winding", "shell")
WINDING_BACKENDS = ("auto", "exact", "igl")
HOLE_MODES = ("auto", "keep", "fill")
AMBIGUOUS_BAND = (0.2, 0.8)  # |winding number| here: the point is neither inside nor outside
MIN_CLOUD_POINTS = 16


class ShapeError(ValueError):
    """A shape source that cannot be trained on (missing file, empty, NaN, ...).

    Examples
    --------
    >>> from nsr.training.data import ShapeError, make_source
    >>> try:
    ...     make_source("mesh")
    ... except ShapeError as err:
    ...     print(err)
    data.kind=mesh needs data.path
    """


def _open3d() -> Any:
    try:
        import open3d
    except (ImportError, OSError) as err:  # OSError: missing libusb on some systems
        raise ImportError(f"this feature needs open3d, which cannot be imported: {err}") from err
    return open3d


def _unit_rows(v: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of ``v`` ``(N, D)`` scaled to unit length; ``NaN`` rows where the length is under ``eps``."""
    n = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return torch.where(n > eps, v / n.clamp(min=eps), torch.full_like(v, float("nan")))


class ShapeSource:
    """Base class: a shape in normalized training-box coordinates.

    ``center`` ``(D,) float`` and ``scale`` map shape units to box units:
    ``normalized = (x - center) * scale``.

    Parameters
    ----------
    center : (D,) float ndarray, optional
        Default: the origin.
    scale : float
        Box units per shape unit.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.data import ShapeSource
    >>> src = ShapeSource(center=np.array([1.0, 0.0, 0.0]), scale=0.5)
    >>> src.from_shape_units(np.array([[3.0, 2.0, 0.0]])), src.to_shape_units(np.array([[1.0, 1.0, 0.0]]))
    (array([[1., 1., 0.]]), array([[3., 2., 0.]]))
    """

    dim: int = 3
    has_sdf: bool = True
    has_normals: bool = True

    def __init__(self, center: np.ndarray | None = None, scale: float = 1.0) -> None:
        self.center = np.zeros(self.dim) if center is None else np.asarray(center, dtype=np.float64)
        self.scale = float(scale)

    def signed_distance(self, x: Tensor) -> Tensor:
        """Box-unit signed distance, negative inside; ``NaN`` if unknown.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points in box units.

        Returns
        -------
        (N,) float Tensor
            In ``x``'s dtype.

        Examples
        --------
        >>> import torch
        >>> from nsr.training.data import AnalyticSource
        >>> from nsr.training.shapes import Sphere
        >>> AnalyticSource(Sphere(0.3)).signed_distance(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]))
        tensor([-0.3000,  0.2000])
        """
        raise NotImplementedError

    def sdf_gradient(self, x: Tensor, sdf: Tensor) -> Tensor:
        """Unit gradient of the signed distance at points, ``NaN`` rows where unknown (this
        base class: everywhere). It is the outward normal of the nearest surface point, the
        target of the ``gradient`` loss at near-surface samples.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points in box units.
        sdf : (N,) float Tensor
            Their signed distances (:meth:`signed_distance`), which fix the gradient's sign.

        Returns
        -------
        (N, D) float Tensor
            In ``x``'s dtype.
        """
        return torch.full_like(x, float("nan"))

    def signed_distance_and_gradient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`signed_distance` and :meth:`sdf_gradient` together (a mesh answers both from
        one nearest-point query).

        Parameters
        ----------
        x : (N, D) float Tensor
            Points in box units.

        Returns
        -------
        sdf : (N,) float Tensor
        gradient : (N, D) float Tensor
        """
        sdf = self.signed_distance(x)
        return sdf, self.sdf_gradient(x, sdf)

    def sample_surface(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Surface points and their unit outward normals.

        Parameters
        ----------
        n : int
            Number of samples.
        gen : torch.Generator
            Random generator (seed it for reproducible samples).

        Returns
        -------
        points : (n, D) float32 Tensor
        normals : (n, D) float32 Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.training.data import AnalyticSource
        >>> from nsr.training.shapes import Sphere
        >>> points, normals = AnalyticSource(Sphere(0.3)).sample_surface(5, torch.Generator().manual_seed(0))
        >>> points.norm(dim=1).round(decimals=4), bool(torch.allclose(normals, points / 0.3, atol=1e-5))
        (tensor([0.3000, 0.3000, 0.3000, 0.3000, 0.3000]), True)
        """
        raise NotImplementedError

    def to_shape_units(self, vertices: np.ndarray | Tensor) -> np.ndarray:
        """Normalized vertices back to the shape's own units.

        Parameters
        ----------
        vertices : (N, D) ndarray or Tensor
            Box units.

        Returns
        -------
        (N, D) float64 ndarray
            ``vertices / scale + center``.

        Examples
        --------
        >>> import numpy as np
        >>> from nsr.training.data import ShapeSource
        >>> ShapeSource(center=np.array([1.0, 2.0, 3.0]), scale=2.0).to_shape_units(np.zeros((1, 3)))
        array([[1., 2., 3.]])
        """
        v = (
            vertices.detach().cpu().numpy()
            if isinstance(vertices, Tensor)
            else np.asarray(vertices)
        )
        return v.astype(np.float64) / self.scale + self.center

    def from_shape_units(self, points: np.ndarray) -> np.ndarray:
        """Shape-unit points to normalized box coordinates.

        Parameters
        ----------
        points : (N, D) ndarray
            Shape units.

        Returns
        -------
        (N, D) float64 ndarray
            ``(points - center) * scale``.

        Examples
        --------
        >>> import numpy as np
        >>> from nsr.training.data import ShapeSource
        >>> ShapeSource(center=np.array([1.0, 2.0, 3.0]), scale=2.0).from_shape_units(np.array([[1.0, 2.0, 4.0]]))
        array([[0., 0., 2.]])
        """
        return (np.asarray(points, dtype=np.float64) - self.center) * self.scale

    def transform(self) -> dict[str, Any]:
        """The stored transform as plain data (for checkpoints and ``transform.json``).

        Returns
        -------
        dict
            ``{"center": list of float, "scale": float}``.

        Examples
        --------
        >>> from nsr.training.data import ShapeSource
        >>> ShapeSource().transform()
        {'center': [0.0, 0.0, 0.0], 'scale': 1.0}
        """
        return {"center": self.center.tolist(), "scale": self.scale}


def fit_transform(points: np.ndarray, fit: float) -> tuple[np.ndarray, float]:
    """Center and scale putting the bounding box of points into ``[-fit, fit]^D``.

    Parameters
    ----------
    points : (N, D) float ndarray
        The shape's points.
    fit : float
        Half-size of the cube its longest side is scaled to.

    Returns
    -------
    center : (D,) float ndarray
        Centre of the bounding box.
    scale : float
        ``2 fit / longest side``.

    Raises
    ------
    ShapeError
        If all points coincide.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.data import fit_transform
    >>> fit_transform(np.array([[0.0, 0, 0], [2, 1, 1]]), fit=0.45)
    (array([1. , 0.5, 0.5]), 0.45)
    """
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
    """A built-in analytic shape (:mod:`nsr.training.shapes`), exact SDF, identity transform.

    Surface samples are spread by area (length in 2D): points drawn uniformly on a
    marching-cubes mesh (marching-squares contour) of the SDF at
    :attr:`surface_resolution` samples per axis, then projected onto the zero level set along the
    SDF gradient (``x <- x - f(x) grad f / |grad f|^2``, a few steps; points that do not
    converge to ``|f| < tol`` are dropped); normals are the normalized gradient there. A
    fraction :attr:`projected_fraction` comes instead from projecting uniform points of the box,
    so that a part thinner than the mesh's cells still gets samples. (Projecting uniform points
    alone spreads samples by the volume that flows onto each part of the surface: a hole or a
    concave crease, which little volume flows to, would get a small share of its area's.)

    Parameters
    ----------
    shape : nsr.training.shapes.Shape
        The shape, in box coordinates.
    box : float
        Half-size of the training box.

    Raises
    ------
    ShapeError
        If ``shape`` is not a Shape or has no surface in the box.

    Examples
    --------
    >>> import torch
    >>> from nsr.training.data import AnalyticSource
    >>> from nsr.training.shapes import Sphere
    >>> src = AnalyticSource(Sphere(0.3))
    >>> src.dim, src.has_sdf, src.transform()
    (3, True, {'center': [0.0, 0.0, 0.0], 'scale': 1.0})
    """

    surface_resolution: dict[int, int] = {2: 512, 3: 96}  # samples per axis of the mesh of the SDF
    projected_fraction: float = 0.1  # surface samples from projected uniform points

    def __init__(self, shape: Shape, box: float = 0.5) -> None:
        if not isinstance(shape, Shape):
            raise ShapeError(f"expected an nsr.training.shapes.Shape, got {type(shape).__name__}")
        self.dim = shape.dim
        super().__init__()
        self.shape, self.box = shape, float(box)
        self._mesh: tuple[Tensor, Tensor, Tensor] | None = None
        pts, _ = self.sample_surface(64, torch.Generator().manual_seed(0))
        if pts.shape[0] == 0:
            raise ShapeError(f"the shape {type(shape).__name__} has no surface inside the box")

    def signed_distance(self, x: Tensor) -> Tensor:
        """The shape's exact SDF, evaluated in float64.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points in box units.

        Returns
        -------
        (N,) float Tensor
            In ``x``'s dtype.

        Examples
        --------
        >>> import torch
        >>> from nsr.training.data import AnalyticSource
        >>> from nsr.training.shapes import Box
        >>> AnalyticSource(Box([0.2, 0.2, 0.2])).signed_distance(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]))
        tensor([-0.2000,  0.3000])
        """
        return self.shape.sdf(x.double()).to(x.dtype)

    def sdf_gradient(self, x: Tensor, sdf: Tensor) -> Tensor:
        """The analytic SDF's gradient by autograd (float64), normalized; ``NaN`` where it vanishes.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points in box units.
        sdf : (N,) float Tensor
            Their signed distances.

        Returns
        -------
        (N, D) float Tensor
            In ``x``'s dtype.

        Examples
        --------
        >>> import torch
        >>> from nsr.training.data import AnalyticSource
        >>> from nsr.training.shapes import Sphere
        >>> src = AnalyticSource(Sphere(0.3))
        >>> x = torch.tensor([[0.0, 0.4, 0.0], [0.0, 0.0, -0.1]])
        >>> src.sdf_gradient(x, src.signed_distance(x))
        tensor([[ 0.,  1.,  0.],
                [ 0.,  0., -1.]])
        """
        with torch.enable_grad():
            xd = x.detach().double().requires_grad_(True)
            (g,) = torch.autograd.grad(self.shape.sdf(xd).sum(), xd)
        return _unit_rows(g).to(x.dtype)

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
        """Points projected onto the zero level set and their normalized SDF gradients.

        Parameters
        ----------
        n : int
            Number of samples (fewer if the projection rarely converges).
        gen : torch.Generator
            Random generator.

        Returns
        -------
        points : (n, D) float32 Tensor
        normals : (n, D) float32 Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.training.data import AnalyticSource
        >>> from nsr.training.shapes import Box
        >>> points, normals = AnalyticSource(Box([0.2, 0.2, 0.2])).sample_surface(6, torch.Generator().manual_seed(0))
        >>> points.abs().max(dim=1).values.round(decimals=5)  # on a face of the box
        tensor([0.2000, 0.2000, 0.2000, 0.2000, 0.2000, 0.2000])
        >>> normals.abs().sum(dim=1)  # axis-aligned face normals
        tensor([1., 1., 1., 1., 1., 1.])
        """
        n_area = n - int(math.ceil(self.projected_fraction * n))
        xa, na = self._sample(n_area, gen, self._points_by_area)
        xp, np_ = self._sample(n - len(xa), gen, self._points_in_box)
        order = torch.randperm(len(xa) + len(xp), generator=gen)
        return torch.cat([xa, xp])[order].float(), torch.cat([na, np_])[order].float()

    def _sample(self, n: int, gen: torch.Generator, draw: Callable[[int, torch.Generator], Tensor]
                ) -> tuple[Tensor, Tensor]:
        """Up to ``n`` converged projections of points from ``draw`` and their unit normals (float64)."""
        found_x, found_n, total = [], [], 0
        for _ in range(20):
            if total >= n:
                break
            x0 = draw(2 * (n - total) + 64, gen)
            if not len(x0):
                break
            x, f, g = self._project(x0)
            gn = torch.linalg.vector_norm(g, dim=-1)
            ok = (f.abs() < 1e-6) & (x.abs() <= self.box).all(-1) & (gn > 0.5)
            found_x.append(x[ok])
            found_n.append(g[ok] / gn[ok, None])
            total += int(ok.sum())
        if not found_x:
            empty = torch.zeros(0, self.dim, dtype=torch.float64)
            return empty, empty
        return torch.cat(found_x)[:n], torch.cat(found_n)[:n]

    def _points_in_box(self, m: int, gen: torch.Generator) -> Tensor:
        return (torch.rand(m, self.dim, generator=gen, dtype=torch.float64) * 2 - 1) * self.box

    def _points_by_area(self, m: int, gen: torch.Generator) -> Tensor:
        """``(m, D)`` points uniform by area on the mesh of the SDF (none if it has no surface)."""
        vertices, simplices, cumulative = self._surface_mesh()
        if not len(simplices):
            return vertices[:0]
        pick = torch.rand(m, generator=gen, dtype=torch.float64) * cumulative[-1]
        corners = vertices[simplices[torch.searchsorted(cumulative, pick).clamp(max=len(simplices) - 1)]]
        r = torch.rand(m, 2, generator=gen, dtype=torch.float64)
        if self.dim == 3:  # uniform in a triangle: (1 - sqrt r1, sqrt r1 (1 - r2), sqrt r1 r2)
            s = r[:, 0].sqrt()
            w = torch.stack([1 - s, s * (1 - r[:, 1]), s * r[:, 1]], 1)
        else:
            w = torch.stack([1 - r[:, 0], r[:, 0]], 1)
        return (w[:, :, None] * corners).sum(1)

    def _surface_mesh(self) -> tuple[Tensor, Tensor, Tensor]:
        """Vertices ``(V, D)``, simplices ``(S, D)`` (triangles; segments in 2D) and cumulative
        areas ``(S,)`` of the SDF's zero set on a grid of :attr:`surface_resolution` samples per
        axis (marching cubes / squares, scikit-image); built once."""
        if self._mesh is None:
            from skimage import measure

            empty = torch.zeros(0, self.dim, dtype=torch.float64)
            self._mesh = (empty, torch.zeros(0, self.dim, dtype=torch.int64), empty[:, 0])
            if self.dim not in (2, 3):  # other dimensions: projected box points only
                return self._mesh
            res = self.surface_resolution[self.dim]
            axis = torch.linspace(-self.box, self.box, res, dtype=torch.float64)
            grid = torch.stack(torch.meshgrid(*[axis] * self.dim, indexing="ij"), -1).reshape(-1, self.dim)
            values = torch.cat([self.shape.sdf(c) for c in grid.split(2**18)]).reshape((res,) * self.dim).numpy()
            step = 2 * self.box / (res - 1)
            if not (values.min() < 0 < values.max()):
                return self._mesh
            if self.dim == 3:
                verts, simplices, _, _ = measure.marching_cubes(values, 0.0, spacing=(step,) * 3)
            else:
                lines = measure.find_contours(values, 0.0)
                starts = np.cumsum([0] + [len(c) for c in lines])
                verts = np.concatenate(lines) * step
                simplices = np.concatenate([np.stack([np.arange(a, b - 1), np.arange(a + 1, b)], 1)
                                            for a, b in zip(starts[:-1], starts[1:], strict=True)])
            v = torch.as_tensor(np.asarray(verts, dtype=np.float64) - self.box)
            s = torch.as_tensor(np.asarray(simplices, dtype=np.int64))
            c = v[s]
            if self.dim == 3:
                size = torch.linalg.vector_norm(torch.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0], dim=1), dim=1) / 2
            else:
                size = torch.linalg.vector_norm(c[:, 1] - c[:, 0], dim=1)
            keep = size > 0
            self._mesh = (v, s[keep], torch.cumsum(size[keep], 0))
        return self._mesh


# ----------------------------------------------------------------------------- meshes


def load_mesh(path: str | Path) -> Any:
    """Read a triangle mesh with trimesh (scenes, e.g. GLB, are concatenated).

    Raises :class:`FileNotFoundError` or :class:`ShapeError` with the reason.

    Parameters
    ----------
    path : str or Path
        OBJ, PLY, STL, OFF, GLB or glTF file.

    Returns
    -------
    trimesh.Trimesh
        Unprocessed (vertices as stored).

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ShapeError
        If it cannot be read, has no triangles, or has NaN or infinite coordinates.

    Examples
    --------
    >>> import tempfile, torch, trimesh
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "slab.obj"
    >>> _ = trimesh.creation.box(extents=(2, 1, 1)).export(path)  # [-1, 1] x [-0.5, 0.5]^2
    >>> from nsr.training.data import load_mesh
    >>> load_mesh(path).faces.shape
    (12, 3)
    >>> tmp.cleanup()
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


def winding_numbers(
    vertices: np.ndarray | Tensor,
    faces: np.ndarray | Tensor,
    points: np.ndarray | Tensor,
    chunk: int = 2**18,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Exact generalized winding number of a triangle soup at ``points``: ``(N, 3) -> (N,)`` float64.

    ``w(p) = sum_f Omega_f(p) / (4 pi)`` with the signed solid angle of each triangle from
    Van Oosterom & Strackee (1983), ``tan(Omega / 2) = a.(b x c) / (|a||b||c| + (a.b)|c| +
    (b.c)|a| + (c.a)|b|)``, ``a, b, c`` the corners relative to ``p``. 1 inside and 0 outside
    a closed outward-oriented mesh; in between near holes. ``vertices`` ``(V, 3)``, ``faces``
    ``(F, 3)`` long. Cost O(N F) (about 0.2-0.4 us per point-face pair on one core in float64,
    half that in float32), in chunks of about ``chunk`` pairs.

    Parameters
    ----------
    vertices : (V, 3) float ndarray or Tensor
    faces : (F, 3) int ndarray or Tensor
    points : (N, 3) float ndarray or Tensor
    chunk : int
        Point-face pairs per chunk.
    dtype : torch.dtype
        Compute dtype.

    Returns
    -------
    (N,) float64 Tensor

    Examples
    --------
    >>> import numpy as np, trimesh
    >>> from nsr.training.data import winding_numbers
    >>> cube = trimesh.creation.box()
    >>> winding_numbers(cube.vertices, cube.faces, np.array([[0.0, 0, 0], [2, 0, 0]])).round(decimals=6)
    tensor([1., 0.], dtype=torch.float64)
    >>> half = winding_numbers(cube.vertices, cube.faces[2:], np.array([[0.0, 0, 0]]))  # one face removed
    >>> round(float(half[0]), 6)  # the centre sees the missing face at a solid angle of 4 pi / 6
    0.833333
    """
    v = torch.as_tensor(vertices).detach().cpu().to(dtype)
    f = torch.as_tensor(faces).detach().cpu().long()
    q = torch.as_tensor(points).detach().cpu().to(dtype)
    corners = [v[f[:, k]].T.contiguous() for k in range(3)]  # 3 x (3, F): coordinate-major
    step = max(1, chunk // max(len(f), 1))
    out = [_winding_chunk(corners, q[i : i + step]) for i in range(0, len(q), step)]
    return torch.cat(out).double() if out else torch.zeros(0, dtype=torch.float64)


def _winding_chunk(corners: list[Tensor], q: Tensor) -> Tensor:
    """Corners ``3 x (3, F)``, points ``(P, 3)`` -> ``(P,)`` winding numbers; written per
    coordinate (``(P, F)`` arrays) because that is 3x faster than ``(P, F, 3)`` cross products."""
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = (
        [c[i][None] - q[:, i, None] for i in range(3)] for c in corners
    )
    la = (ax * ax + ay * ay + az * az).sqrt()
    lb = (bx * bx + by * by + bz * bz).sqrt()
    lc = (cx * cx + cy * cy + cz * cz).sqrt()
    det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
    den = la * lb * lc + (ax * bx + ay * by + az * bz) * lc + (bx * cx + by * cy + bz * cz) * la
    den = den + (cx * ax + cy * ay + cz * az) * lb
    return torch.atan2(det, den).sum(1) / (2.0 * torch.pi)


def _igl() -> Any:
    try:
        import igl
    except ImportError as err:
        raise ImportError(
            "winding_backend=igl needs libigl (pip install libigl); or use winding_backend=exact "
            f"(O(points x faces)): {err}"
        ) from err
    return igl


def igl_available() -> bool:
    """Whether libigl's ``igl`` imports (the optional fast winding number).

    Returns
    -------
    bool

    Examples
    --------
    >>> from nsr.training.data import igl_available
    >>> isinstance(igl_available(), bool)
    True
    """
    try:
        _igl()
    except ImportError:
        return False
    return True


def mesh_winding_numbers(
    vertices: np.ndarray,
    faces: np.ndarray,
    points: np.ndarray | Tensor,
    backend: str = "auto",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Generalized winding numbers ``(N,)`` float64 by ``backend``: ``exact``
    (:func:`winding_numbers`), ``igl`` (libigl's fast winding number, an approximation with
    error ~1e-3 away from the surface) or ``auto`` (igl when importable, else exact).

    Parameters
    ----------
    vertices : (V, 3) float ndarray
    faces : (F, 3) int ndarray
    points : (N, 3) float ndarray or Tensor
    backend : {"auto", "exact", "igl"}
    dtype : torch.dtype
        Compute dtype of the exact backend.

    Returns
    -------
    (N,) float64 Tensor

    Raises
    ------
    ShapeError
        On an unknown backend.
    ImportError
        For ``igl`` without libigl.

    Examples
    --------
    >>> import numpy as np, trimesh
    >>> from nsr.training.data import mesh_winding_numbers
    >>> cube = trimesh.creation.box()
    >>> mesh_winding_numbers(cube.vertices, cube.faces, np.array([[0.0, 0, 0]]), backend="exact").round(decimals=6)
    tensor([1.], dtype=torch.float64)
    """
    if backend not in WINDING_BACKENDS:
        raise ShapeError(f"winding_backend must be one of {WINDING_BACKENDS}, got {backend!r}")
    q = points.detach().cpu().double().numpy() if isinstance(points, Tensor) else np.asarray(points, np.float64)
    if backend in ("auto", "igl"):
        try:
            igl = _igl()
        except ImportError:
            if backend == "igl":
                raise
        else:
            w = igl.fast_winding_number(
                np.ascontiguousarray(vertices, dtype=np.float64), np.ascontiguousarray(faces, dtype=np.int64),
                np.ascontiguousarray(q),
            )
            return torch.from_numpy(np.asarray(w, dtype=np.float64))
    return winding_numbers(vertices, faces, q, dtype=dtype)


def ambiguous_fraction(w: Tensor) -> float:
    """Fraction of winding numbers ``(N,)`` with ``|w|`` in :data:`AMBIGUOUS_BAND` (neither
    inside nor outside); 0 for a closed mesh away from its surface.

    Parameters
    ----------
    w : (N,) Tensor
        Winding numbers.

    Returns
    -------
    float

    Examples
    --------
    >>> import torch
    >>> from nsr.training.data import ambiguous_fraction
    >>> ambiguous_fraction(torch.tensor([0.0, 1.0, 0.5, -0.3]))
    0.5
    """
    lo, hi = AMBIGUOUS_BAND
    aw = w.abs()
    return float(((aw >= lo) & (aw <= hi)).double().mean()) if w.numel() else 0.0


def is_closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Watertight after merging coincident vertices (OBJ seams duplicate them).

    Parameters
    ----------
    vertices : (V, 3) float ndarray
    faces : (F, 3) int ndarray

    Returns
    -------
    bool

    Examples
    --------
    >>> import trimesh
    >>> from nsr.training.data import is_closed
    >>> cube = trimesh.creation.box()
    >>> is_closed(cube.vertices, cube.faces), is_closed(cube.vertices, cube.faces[1:])
    (True, False)
    """
    import trimesh

    return bool(trimesh.Trimesh(vertices, faces, process=True).is_watertight)


def cap_holes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Close each boundary loop of a mesh with a fan of triangles from the loop's centroid.

    A scan's holes (the shared bunny's base) leave the inside to a vote, and the signed distance
    jumps across them from ``+r`` to ``-r`` (``r`` the distance to the rim). A network fitted to
    that closes them anyway, with a cap that bulges out along the vote's ``w = 0.5`` surface.
    Caps put in the mesh make the target a true signed distance of a closed surface, and the
    cap nearly flat: a fan from the centroid is flat where the loop is planar, and about the
    least area that closes a scan's small holes.

    Vertices are merged first (by position; texture seams are not holes). Boundary loops that
    do not close (non-manifold rims) are left open.

    Parameters
    ----------
    vertices : (V, 3) float ndarray
    faces : (F, 3) int ndarray

    Returns
    -------
    vertices : (V', 3) float64 ndarray
        The merged vertices, then one centroid per loop closed.
    faces : (F', 3) int64 ndarray
        The faces, then the caps, each cap triangle wound against the rim's face so the
        orientation carries over.
    n_loops : int
        Loops closed.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.training.data import cap_holes, is_closed
    >>> cube = trimesh.creation.box()
    >>> v, f, n = cap_holes(cube.vertices, cube.faces[2:])  # one side of the cube removed
    >>> n, len(f) - 10, is_closed(v, f)
    (1, 4, True)
    """
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64), process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    outline = mesh.outline()
    verts, tris = [np.asarray(mesh.vertices)], [np.asarray(mesh.faces, dtype=np.int64)]
    # The rims' edges as their faces run them (edges used by one face only): few, unlike all edges.
    edges = np.asarray(mesh.edges)
    rim = edges[trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)]
    directed = set(map(tuple, rim.tolist()))
    n, closed = len(mesh.vertices), 0
    for entity in outline.entities:
        loop = np.asarray(entity.points, dtype=np.int64)
        if len(loop) < 4 or loop[0] != loop[-1]:
            continue
        a = loop[:-1]
        b = np.roll(a, -1)
        if (int(a[0]), int(b[0])) in directed:  # a face runs a -> b: the cap runs b -> a
            a, b = b, a
        verts.append(np.asarray(mesh.vertices)[loop[:-1]].mean(0, keepdims=True))
        tris.append(np.column_stack([a, b, np.full(len(a), n)]))
        n, closed = n + 1, closed + 1
    return np.concatenate(verts), np.concatenate(tris), closed


class MeshSource(ShapeSource):
    """Triangle mesh file, normalized so its bounding box fits ``[-fit, fit]^3``, centered.

    Distances from open3d's ``compute_distance`` (vectorized, multithreaded); the sign by
    ``sign`` (see the module docstring: ``auto``, ``rays``, ``winding``, ``shell``).
    ``inside_check`` holds what ``auto`` measured on an open mesh (``ambiguous_fraction``,
    ``n_probes``) or is empty.

    Parameters
    ----------
    path : str or Path
        The mesh file (:func:`load_mesh`).
    fit : float
        Half-size of the cube the longest side is scaled to.
    n_rays : int
        Rays of the majority vote on open meshes (made odd).
    sign : {"auto", "rays", "winding", "shell"}
        How inside is decided.
    shell_thickness : float
        Thickness of the ``shell`` mode, box units.
    max_ambiguous : float
        Largest ambiguous fraction ``auto`` accepts on an open mesh.
    winding_backend : {"auto", "exact", "igl"}
        Winding number backend.
    holes : {"auto", "keep", "fill"}
        ``fill``: close an open mesh's boundary loops with flat caps (:func:`cap_holes`) and train
        on the closed surface they make (``holes_filled`` says how many): the signed distance is
        continuous across the holes, and the network's caps are flat instead of bulging along the
        inside vote. ``auto`` (default): ``fill`` when ``sign="auto"`` and the mesh passed its
        inside check (which always sees the mesh as given), else ``keep``: the mesh as it is.

    Raises
    ------
    ShapeError
        On a bad option, an unreadable or degenerate mesh, or (``auto``) an open mesh without an inside.

    Examples
    --------
    >>> import tempfile, torch, trimesh
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "slab.obj"
    >>> _ = trimesh.creation.box(extents=(2, 1, 1)).export(path)  # [-1, 1] x [-0.5, 0.5]^2
    >>> from nsr.training.data import MeshSource
    >>> src = MeshSource(path, fit=0.45, sign="winding", winding_backend="exact")
    >>> src.watertight, src.transform()  # the slab's longest side, 2, becomes 0.9
    (True, {'center': [0.0, 0.0, 0.0], 'scale': 0.45})
    >>> src.inside(torch.tensor([[0.0, 0.0, 0.0], [0.4, 0.3, 0.0]]))
    array([ True, False])
    >>> tmp.cleanup()
    """

    dim = 3

    def __init__(
        self,
        path: str | Path,
        fit: float = 0.45,
        n_rays: int = 11,
        sign: str = "auto",
        shell_thickness: float = 0.01,
        max_ambiguous: float = 0.05,
        winding_backend: str = "auto",
        holes: str = "auto",
    ) -> None:
        self.path = Path(path)
        if holes not in HOLE_MODES:
            raise ShapeError(f"data.holes must be one of {', '.join(HOLE_MODES)}, got {holes!r}")
        if sign not in SIGN_MODES:
            raise ShapeError(f"data.sign must be one of {', '.join(SIGN_MODES)}, got {sign!r}")
        if winding_backend not in WINDING_BACKENDS:
            raise ShapeError(f"data.winding_backend must be one of {WINDING_BACKENDS}, got {winding_backend!r}")
        if sign == "shell" and holes == "fill":
            raise ShapeError("data.holes=fill closes a mesh's holes, data.sign=shell is for a surface without an "
                             "inside: choose one (data.holes=keep or auto with the shell)")
        if sign == "shell" and not 0 < shell_thickness < 0.5:
            raise ShapeError(f"data.shell_thickness must be in (0, 0.5) box units, got {shell_thickness}")
        if not 0 <= max_ambiguous <= 1:
            raise ShapeError(f"data.max_ambiguous must be a fraction in [0, 1], got {max_ambiguous}")
        mesh = load_mesh(self.path)
        vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
        center, scale = fit_transform(vertices, fit)
        super().__init__(center, scale)
        self.sign, self.shell_thickness = sign, float(shell_thickness)
        self.winding_backend = winding_backend
        self._set_mesh(vertices, faces)
        self.watertight = is_closed(self.vertices, self.faces)
        self.n_rays = 1 if self.watertight else int(n_rays) | 1
        self._scene: Any = None
        self.inside_check: dict[str, float] = {}
        if sign == "auto" and not self.watertight:
            self._check_inside(max_ambiguous)  # on the mesh as given: caps cannot make an inside
        self.holes_filled = 0
        if not self.watertight and (holes == "fill" or (holes == "auto" and sign == "auto")):
            # The caps close what the check found small; the vote stays (n_rays), robust where a
            # cap crosses the surface.
            vertices, faces, self.holes_filled = cap_holes(vertices, faces)
            self._set_mesh(vertices, faces)
            self.watertight = is_closed(self.vertices, self.faces)

    def _set_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        """Hold a mesh ``(V, 3)``, ``(F, 3)`` in the file's units, in box units with its triangles,
        areas and unit normals."""
        self.vertices = self.from_shape_units(vertices).astype(np.float32)
        self.faces = np.asarray(faces, dtype=np.int64)
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

    def _check_inside(self, max_ambiguous: float, max_pairs: int = 2**25) -> None:
        """Refuse an open mesh whose inside is undefined (see the module docstring).

        2048 probes, fewer (down to 256) with the exact backend on large meshes so that the
        check costs at most ``max_pairs`` point-face pairs (~5 s on one core, float32: the
        fraction needs no more); 256 probes still resolve a fraction of 0.05 to about +-0.014.
        """
        exact = self.winding_backend == "exact" or (self.winding_backend == "auto" and not igl_available())
        n_probes = int(np.clip(max_pairs // len(self.faces), 256, 2048)) if exact else 2048
        probes = self.probe_points(n_probes, torch.Generator().manual_seed(0))
        w = mesh_winding_numbers(self.vertices, self.faces, probes, self.winding_backend, torch.float32)
        frac = ambiguous_fraction(w)
        self.inside_check = {"ambiguous_fraction": frac, "n_probes": float(len(probes))}
        if frac > max_ambiguous:
            raise ShapeError(
                f"{self.path}: the mesh is open and its inside is undefined: the generalized winding "
                f"number is neither ~0 nor ~1 (|w| in [{AMBIGUOUS_BAND[0]}, {AMBIGUOUS_BAND[1]}]) at "
                f"{100 * frac:.1f}% of {len(probes)} probe points near it (limit data.max_ambiguous="
                f"{max_ambiguous}). Choose how to read it: data.sign=shell (a closed shell of "
                "data.shell_thickness around the surface), data.sign=winding (inside where |w| >= 0.5; "
                "for surfaces with holes), data.sign=rays (majority ray vote, unchecked), or close the "
                "mesh first"
            )

    def probe_points(self, n: int, gen: torch.Generator, sigma: float = 0.02) -> Tensor:
        """``n`` points ``(n, 3)``: half near the surface (Gaussian, ``sigma`` box units), half
        uniform in the fitted bounding cube ``[-0.5, 0.5]^3``.

        Parameters
        ----------
        n : int
            Number of points.
        gen : torch.Generator
            Random generator.
        sigma : float
            Noise of the near-surface half.

        Returns
        -------
        (n, 3) float32 Tensor

        Examples
        --------
        >>> import tempfile, torch, trimesh
        >>> from pathlib import Path
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = Path(tmp.name) / "slab.obj"
        >>> _ = trimesh.creation.box(extents=(2, 1, 1)).export(path)  # [-1, 1] x [-0.5, 0.5]^2
        >>> from nsr.training.data import MeshSource
        >>> src = MeshSource(path, sign="winding", winding_backend="exact")
        >>> src.probe_points(10, torch.Generator().manual_seed(0)).shape
        torch.Size([10, 3])
        >>> tmp.cleanup()
        """
        surf, _ = self.sample_surface(n - n // 2, gen)
        near = surf + torch.randn(surf.shape, generator=gen) * sigma
        uni = torch.rand(n // 2, 3, generator=gen) - 0.5
        return torch.cat([near, uni])

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

    def unsigned_distance(self, x: Tensor) -> np.ndarray:
        """Box-unit distance to the surface (open3d ``RaycastingScene``).

        Parameters
        ----------
        x : (N, 3) float Tensor
            Points in box units.

        Returns
        -------
        (N,) float32 ndarray
        """
        o3d = _open3d()
        return self._raycasting_scene().compute_distance(o3d.core.Tensor(x.detach().cpu().float().numpy())).numpy()

    def inside(self, x: Tensor) -> np.ndarray:
        """Which points are inside, by ``sign`` (not defined for ``shell``).

        Parameters
        ----------
        x : (N, 3) float Tensor
            Points in box units.

        Returns
        -------
        (N,) bool ndarray

        Examples
        --------
        >>> import tempfile, torch, trimesh
        >>> from pathlib import Path
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = Path(tmp.name) / "slab.obj"
        >>> _ = trimesh.creation.box(extents=(2, 1, 1)).export(path)  # [-1, 1] x [-0.5, 0.5]^2
        >>> from nsr.training.data import MeshSource
        >>> MeshSource(path, sign="winding", winding_backend="exact").inside(torch.tensor([[0.0, 0.2, 0.0]]))
        array([ True])
        >>> tmp.cleanup()
        """
        if self.sign == "winding":
            self._warn_slow_winding(len(x))
            w = mesh_winding_numbers(self.vertices, self.faces, x, self.winding_backend)
            return (w.abs() >= 0.5).numpy()
        o3d = _open3d()
        q = x.detach().cpu().float().numpy()
        if self.n_rays == 1:  # closed: the parity of any ray is the answer
            return self._raycasting_scene().compute_occupancy(o3d.core.Tensor(q), nsamples=1).numpy() > 0.5
        return self._ray_vote(q)

    def _ray_vote(self, q: np.ndarray, chunk: int = 2**16) -> np.ndarray:
        """Majority of ``n_rays`` ray parities per point ``(N, 3) -> (N,)`` bool, each ray in its own
        uniformly random direction (fixed seed: the same points get the same answer).

        Not open3d's ``compute_occupancy(nsamples=k)``: its rays all leave towards the positive
        octant, so every point below a hole facing that way (a scan's open base) sees through the
        hole on all of them and is voted inside, down to the box (the shared bunny: ~0.3% of the
        box, winding number ~0.07 there). The fraction of odd parities over random directions
        is an estimate of the generalized winding number of a mesh with holes, so the vote
        follows ``|w| >= 0.5``.
        """
        o3d = _open3d()
        scene, k = self._raycasting_scene(), self.n_rays
        rng = np.random.default_rng(0)
        out = np.empty(len(q), dtype=bool)
        for s in range(0, len(q), chunk):
            p = q[s : s + chunk]
            d = rng.standard_normal((len(p) * k, 3)).astype(np.float32)
            d /= np.linalg.norm(d, axis=1, keepdims=True).clip(min=1e-12)
            rays = np.concatenate([np.repeat(p, k, axis=0), d], axis=1)
            hits = scene.count_intersections(o3d.core.Tensor(rays)).numpy().reshape(len(p), k)
            out[s : s + chunk] = (hits % 2).sum(1) > k // 2
        return out

    def _warn_slow_winding(self, n: int, pairs: float = 1e9) -> None:
        """Say once when the exact winding number will take minutes (~0.3 us per pair)."""
        exact = self.winding_backend == "exact" or (self.winding_backend == "auto" and not igl_available())
        if exact and n * len(self.faces) > pairs and not getattr(self, "_warned_slow", False):
            self._warned_slow = True
            warnings.warn(
                f"{self.path}: exact winding numbers for {n} points x {len(self.faces)} faces "
                f"(~{n * len(self.faces) * 3e-7:.0f} s on one core); pip install libigl for the fast "
                "winding number, or lower data.sampling.pool_size",
                RuntimeWarning,
                stacklevel=3,
            )

    def signed_distance(self, x: Tensor) -> Tensor:
        """Unsigned distance (open3d) with the sign of :meth:`inside`, or minus half the shell.

        Parameters
        ----------
        x : (N, 3) float Tensor
            Points in box units.

        Returns
        -------
        (N,) float Tensor
            In ``x``'s dtype and on its device.
        """
        return self._signed(x, self.unsigned_distance(x))

    def _signed(self, x: Tensor, dist: np.ndarray) -> Tensor:
        """Distances ``(N,)`` float32 at ``x`` with the sign of :meth:`inside`, or minus half the shell."""
        if self.sign == "shell":
            sdf = dist - np.float32(self.shell_thickness / 2)
        else:
            sdf = np.where(self.inside(x), -dist, dist)
        return torch.from_numpy(sdf).to(device=x.device, dtype=x.dtype)

    def sdf_gradient(self, x: Tensor, sdf: Tensor) -> Tensor:
        """``sign * (x - q) / |x - q|`` with ``q`` the nearest surface point (open3d), the sign of
        ``sdf`` (``+1`` for ``shell``, an unsigned distance there): the exact gradient of the
        training labels, whatever the faces' orientation; ``NaN`` within 1e-7 of the surface.

        Parameters
        ----------
        x : (N, 3) float Tensor
            Points in box units.
        sdf : (N,) float Tensor
            Their signed distances.

        Returns
        -------
        (N, 3) float Tensor
            In ``x``'s dtype.

        Examples
        --------
        >>> import tempfile, torch, trimesh
        >>> from pathlib import Path
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = Path(tmp.name) / "cube.obj"
        >>> _ = trimesh.creation.box(extents=(1, 1, 1)).export(path)
        >>> from nsr.training.data import MeshSource
        >>> src = MeshSource(path, fit=0.4)  # the cube fills [-0.4, 0.4]^3
        >>> x = torch.tensor([[0.0, 0.0, 0.45], [0.3, 0.0, 0.0]])
        >>> (src.sdf_gradient(x, src.signed_distance(x)).round(decimals=4) + 0.0).tolist()  # outward, inside too
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
        >>> tmp.cleanup()
        """
        return self._gradient(self._offsets(x), sdf).to(device=x.device, dtype=x.dtype)

    def signed_distance_and_gradient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`signed_distance` and :meth:`sdf_gradient` from one nearest-point query.

        Parameters
        ----------
        x : (N, 3) float Tensor
            Points in box units.

        Returns
        -------
        sdf : (N,) float Tensor
        gradient : (N, 3) float Tensor
        """
        d = self._offsets(x)
        sdf = self._signed(x, torch.linalg.vector_norm(d, dim=1).float().numpy())
        return sdf, self._gradient(d, sdf).to(device=x.device, dtype=x.dtype)

    def _offsets(self, x: Tensor) -> Tensor:
        """``x - q`` ``(N, 3)`` float64 (CPU), ``q`` the nearest surface point (open3d)."""
        o3d = _open3d()
        q = self._raycasting_scene().compute_closest_points(o3d.core.Tensor(x.detach().cpu().float().numpy()))
        return x.detach().cpu().double() - torch.from_numpy(q["points"].numpy()).double()

    def _gradient(self, offsets: Tensor, sdf: Tensor) -> Tensor:
        """Unit ``offsets`` ``(N, 3)`` turned by the sign of ``sdf`` (none for a shell's unsigned distance)."""
        sign = torch.ones(len(sdf), dtype=torch.float64) if self.sign == "shell" else torch.where(
            sdf.cpu() < 0, -1.0, 1.0).double()
        return _unit_rows(offsets * sign[:, None], eps=1e-7)

    def _sample_faces(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        face = torch.multinomial(self._areas, n, replacement=True, generator=gen)
        u = torch.rand(n, 2, generator=gen)
        su = u[:, 0].sqrt()
        bary = torch.stack([1 - su, su * (1 - u[:, 1]), su * u[:, 1]], dim=1)  # (n, 3)
        pts = (bary[:, :, None] * self._tri[face]).sum(1)
        return pts, self._face_normals[face]

    def sample_surface(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Area-weighted points on the triangles with their face normals (on the shell's faces for ``shell``).

        Parameters
        ----------
        n : int
            Number of samples.
        gen : torch.Generator
            Random generator.

        Returns
        -------
        points : (n, 3) float32 Tensor
        normals : (n, 3) float32 Tensor

        Examples
        --------
        >>> import tempfile, torch, trimesh
        >>> from pathlib import Path
        >>> from nsr.training.data import MeshSource
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = trimesh.creation.box(extents=(2, 1, 1)).export(Path(tmp) / "slab.obj")
        ...     src = MeshSource(Path(tmp) / "slab.obj", sign="winding", winding_backend="exact")
        >>> points, normals = src.sample_surface(4, torch.Generator().manual_seed(0))
        >>> points.shape, normals.abs().sum(dim=1)
        (torch.Size([4, 3]), tensor([1., 1., 1., 1.]))
        """
        if self.sign != "shell":
            return self._sample_faces(n, gen)
        return self._sample_shell(n, gen)

    def _sample_shell(self, n: int, gen: torch.Generator, rounds: int = 20) -> tuple[Tensor, Tensor]:
        """Points on the shell's faces ``p +- (t/2) n`` (normal ``+-n``); offsets that land
        closer than ``t/2`` to another part of the surface (creases, thin places) are not on
        the shell and are dropped. The caps along open boundaries are not sampled."""
        half = self.shell_thickness / 2
        got_p, got_n, total = [], [], 0
        for _ in range(rounds):
            if total >= n:
                break
            p, nrm = self._sample_faces(2 * (n - total) + 16, gen)
            side = torch.randint(0, 2, (p.shape[0], 1), generator=gen).float() * 2 - 1
            q, qn = p + side * half * nrm, side * nrm
            ok = torch.from_numpy(np.abs(self.unsigned_distance(q) - half) <= 1e-3 * half + 1e-6)
            got_p.append(q[ok])
            got_n.append(qn[ok])
            total += int(ok.sum())
        if total < n:
            raise ShapeError(
                f"{self.path}: only {total} of {n} shell samples lie on the shell of thickness "
                f"{self.shell_thickness}; the surface folds tighter than that: use a smaller data.shell_thickness"
            )
        return torch.cat(got_p)[:n], torch.cat(got_n)[:n]


# ----------------------------------------------------------------------------- point clouds


def _xyz_format(path: Path) -> str:
    with path.open() as fh:
        first = fh.readline().split()
    return "xyzn" if len(first) >= 6 else "xyz"


def load_point_cloud(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Points ``(N, 3)`` and normals ``(N, 3)`` or ``None`` of a PLY/PCD/XYZ(N) file (open3d).

    Parameters
    ----------
    path : str or Path
        The point cloud file.

    Returns
    -------
    points : (N, 3) float64 ndarray
    normals : (N, 3) float64 ndarray or None

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ShapeError
        If it is empty, unreadable, or has NaN or infinite coordinates.

    Examples
    --------
    An XYZN file (a point and its normal per line):

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from nsr.training.data import load_point_cloud
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "two.xyzn"
    ...     np.savetxt(path, [[0, 0, 0.5, 0, 0, 1], [0, 0, -0.5, 0, 0, -1]])
    ...     points, normals = load_point_cloud(path)
    >>> points
    array([[ 0. ,  0. ,  0.5],
           [ 0. ,  0. , -0.5]])
    >>> normals[:, 2]
    array([ 1., -1.])
    """
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


def check_normals(normals: np.ndarray, what: str, tol: float = 1e-2) -> None:
    """Refuse normals ``(N, 3)`` that are not finite unit vectors (zero normals are what a file
    with an empty normal field gives; they would train the normal loss on nothing).

    Parameters
    ----------
    normals : (N, 3) float ndarray
    what : str
        Named in the error (e.g. the file).
    tol : float
        Accepted deviation of a length from 1.

    Raises
    ------
    ShapeError
        On NaN or infinite, zero, or non-unit normals.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.data import ShapeError, check_normals
    >>> check_normals(np.array([[0.0, 0.0, 1.0]]), "cloud.ply")  # fine: nothing happens
    >>> try:
    ...     check_normals(np.array([[0.0, 0.0, 2.0]]), "cloud.ply")
    ... except ShapeError as err:
    ...     print(str(err)[:46])
    cloud.ply: 1 of 1 normals are not unit vectors
    """
    bad = ~np.isfinite(normals).all(1)
    if bad.any():
        raise ShapeError(f"{what}: {int(bad.sum())} of {len(normals)} normals are NaN or infinite; fix or drop them")
    norm = np.linalg.norm(normals, axis=1)
    zero = norm < 1e-6
    if zero.any():
        raise ShapeError(
            f"{what}: {int(zero.sum())} of {len(normals)} normals are zero vectors"
            + (" (all of them: the file has a normal field but no normals)" if zero.all() else "")
            + "; give an oriented cloud, or train without normals (data.require_normals=false, loss.normal=0)"
        )
    off = np.abs(norm - 1.0) > tol
    if off.any():
        raise ShapeError(
            f"{what}: {int(off.sum())} of {len(normals)} normals are not unit vectors (lengths "
            f"{norm.min():.3g} to {norm.max():.3g}); normalize them in the file (a normal's length "
            "is not a confidence nsr could use)"
        )


class PointCloudSource(ShapeSource):
    """Oriented point cloud: surface samples and normals only, no SDF off the surface.

    ``require_normals`` (default) makes a cloud without normals an error at load time.

    Parameters
    ----------
    path : str or Path
        The point cloud file (:func:`load_point_cloud`, needs open3d).
    fit : float
        Half-size of the cube the longest side is scaled to.
    require_normals : bool
        Refuse a cloud without normals.

    Raises
    ------
    ShapeError
        Without normals (when required), with fewer than 16 points, or with bad normals.

    Examples
    --------
    The 26 unit normals of the directions in {-1, 0, 1}^3, as points on a sphere of radius 2
    (normals pointing out), scaled into the box: the longest side becomes ``2 * fit``:

    >>> import itertools, tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from nsr.training.data import PointCloudSource
    >>> d = np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if any(v)], dtype=float)
    >>> n = d / np.linalg.norm(d, axis=1, keepdims=True)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "ball.xyzn"
    ...     np.savetxt(path, np.hstack([2 * n, n]))
    ...     cloud = PointCloudSource(path, fit=0.45)
    >>> tuple(cloud.points.shape), round(float(cloud.points.max()), 4), cloud.has_normals
    ((26, 3), 0.45, True)
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
        if len(pts) < MIN_CLOUD_POINTS:
            raise ShapeError(
                f"{self.path}: only {len(pts)} points; a surface needs at least {MIN_CLOUD_POINTS} "
                "(and thousands to be learned well)"
            )
        center, scale = fit_transform(pts, fit)
        super().__init__(center, scale)
        self.has_normals = normals is not None
        self.points = torch.from_numpy(self.from_shape_units(pts)).float()
        if normals is not None:
            check_normals(normals, str(self.path))
            nrm = torch.from_numpy(normals).float()
            self.normals = nrm / torch.linalg.vector_norm(nrm, dim=-1, keepdim=True)
        else:
            self.normals = torch.full_like(self.points, float("nan"))

    def signed_distance(self, x: Tensor) -> Tensor:
        """Unknown off the surface: ``NaN`` for every point.

        Parameters
        ----------
        x : (N, 3) float Tensor
            Points in box units.

        Returns
        -------
        (N,) float Tensor
            All ``NaN``.
        """
        return torch.full(x.shape[:1], float("nan"), dtype=x.dtype, device=x.device)

    def sample_surface(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` points of the cloud drawn with replacement, and their normals (``NaN`` without normals).

        Parameters
        ----------
        n : int
            Number of samples.
        gen : torch.Generator
            Random generator.

        Returns
        -------
        points : (n, 3) float32 Tensor
        normals : (n, 3) float32 Tensor
        """
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
    sign: str = "auto",
    shell_thickness: float = 0.01,
    max_ambiguous: float = 0.05,
    winding_backend: str = "auto",
    holes: str = "auto",
) -> ShapeSource:
    """Build and validate a source; every bad input raises here, before any training.

    ``sign``, ``shell_thickness``, ``max_ambiguous``, ``winding_backend``, ``holes``: mesh files
    only, see :class:`MeshSource`.

    Parameters
    ----------
    kind : {"analytic", "mesh", "pointcloud"}
        The source type.
    shape : nsr.training.shapes.Shape, optional
        For ``analytic``.
    path : str or Path, optional
        For ``mesh`` and ``pointcloud``.
    box : float
        Half-size of the training box.
    fit : float
        Half-size files are scaled to, ``0 < fit <= box``.
    n_rays, require_normals, sign, shell_thickness, max_ambiguous, winding_backend, holes
        Passed to :class:`MeshSource` or :class:`PointCloudSource`.

    Returns
    -------
    ShapeSource

    Raises
    ------
    ShapeError
        On any bad input.

    Examples
    --------
    >>> from nsr.training.data import make_source
    >>> from nsr.training.shapes import Box
    >>> type(make_source("analytic", shape=Box([0.2, 0.2, 0.2]))).__name__
    'AnalyticSource'
    """
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
        return MeshSource(path, fit, n_rays, sign, shell_thickness, max_ambiguous, winding_backend, holes)
    if kind == "pointcloud":
        return PointCloudSource(path, fit, require_normals)
    raise ShapeError(f"unknown data.kind {kind!r}: use analytic, mesh or pointcloud")


def split_counts(n: int, fractions: dict[str, float], n_sigmas: int) -> dict[str, int]:
    """Points per kind (``surface``, ``near``, ``uniform``) for a batch of ``n``.

    Parameters
    ----------
    n : int
        Batch size.
    fractions : dict of str to float
        Relative weights of ``surface``, ``near`` and ``uniform``.
    n_sigmas : int
        Noise levels of ``near`` (its count is made a multiple of it).

    Returns
    -------
    dict of str to int
        Summing to ``n``; at least one surface point.

    Raises
    ------
    ValueError
        On negative fractions or a zero sum.

    Examples
    --------
    >>> from nsr.training.data import split_counts
    >>> split_counts(1000, {"surface": 0.2, "near": 0.5, "uniform": 0.3}, n_sigmas=2)
    {'surface': 200, 'near': 500, 'uniform': 300}
    """
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
    then uniform), ``sdf`` ``(Q,)`` (``NaN`` where unknown) and ``gradients`` ``(Q, D)``, the
    SDF's unit gradient at the near-surface points (``NaN`` rows at uniform points and where
    unknown).

    Parameters
    ----------
    source : ShapeSource
        The shape.
    counts : dict of str to int
        From :func:`split_counts`.
    sigmas : sequence of float
        Near-surface noise levels, fractions of the box size ``2 box``.
    box : float
        Half-size of the training box.
    gen : torch.Generator
        Random generator.

    Returns
    -------
    dict of str to Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.training.data import AnalyticSource, sample_points
    >>> from nsr.training.shapes import Sphere
    >>> batch = sample_points(AnalyticSource(Sphere(0.3)), {"surface": 8, "near": 4, "uniform": 6}, [0.01, 0.003],
    ...                       0.5, torch.Generator().manual_seed(0))
    >>> {k: tuple(v.shape) for k, v in batch.items()}
    {'surface': (8, 3), 'normals': (8, 3), 'points': (10, 3), 'sdf': (10,), 'gradients': (10, 3)}
    >>> bool(torch.allclose(batch["sdf"], batch["points"].norm(dim=1) - 0.3, atol=1e-6))
    True
    >>> near = batch["points"][:4]  # the SDF's gradient there; NaN at the uniform points
    >>> bool(torch.allclose(batch["gradients"][:4], near / near.norm(dim=1, keepdim=True), atol=1e-6))
    True
    >>> bool(batch["gradients"][4:].isnan().all())
    True
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
    near, uni = near.float(), uni.float()
    # The SDF's gradient where the surface is near (the ``gradient`` loss's targets); uniform
    # points stay NaN: far from the surface the gradient does not shape the level set.
    if near.shape[0]:
        sdf_near, grad_near = source.signed_distance_and_gradient(near)
    else:
        sdf_near, grad_near = torch.zeros(0), torch.zeros(0, d)
    sdf_uni = source.signed_distance(uni) if uni.shape[0] else torch.zeros(0)
    grads = torch.cat([grad_near.float(), torch.full((uni.shape[0], d), float("nan"))])
    return {"surface": surf.float(), "normals": nrm.float(), "points": torch.cat([near, uni]),
            "sdf": torch.cat([sdf_near.float(), sdf_uni.float()]), "gradients": grads}


def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Deterministic generator for batch ``index`` of ``epoch`` (independent of process count).

    Parameters
    ----------
    seed, epoch, index : int

    Returns
    -------
    torch.Generator

    Examples
    --------
    >>> import torch
    >>> from nsr.training.data import batch_generator
    >>> a, b = torch.rand(3, generator=batch_generator(0, 1, 2)), torch.rand(3, generator=batch_generator(0, 1, 2))
    >>> bool(torch.equal(a, b)), bool(torch.equal(a, torch.rand(3, generator=batch_generator(0, 1, 3))))
    (True, False)
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
