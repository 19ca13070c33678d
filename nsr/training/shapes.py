"""Built-in analytic shapes with exact signed distance functions (negative inside).

The formulas are Inigo Quilez's exact SDFs (https://iquilezles.org/articles/distfunctions/
and .../distfunctions2d/). Every shape is a :class:`Shape`: ``shape.sdf(x)`` maps a torch
tensor ``(N, D) float`` to ``(N,)``; calling the shape also accepts numpy arrays and returns
numpy then. Shapes are given directly in training-box coordinates (no normalization).

CSG (:class:`Union`, :class:`Intersection`, :class:`Difference`) uses min / max, which is
exact outside a union and a lower bound (in absolute value) elsewhere; the zero level set
and the sign are always exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _vec(values: Sequence[float] | float, dim: int) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(dim)
    if t.numel() != dim:
        raise ValueError(f"expected {dim} values, got {t.numel()}")
    return t.clone()


class Shape:
    """An analytic shape in ``dim`` dimensions with an exact SDF, negative inside.

    Subclasses implement :meth:`sdf`; calling a shape evaluates it on torch or numpy points.

    Attributes
    ----------
    dim : int
        Dimension of the points the shape takes (2 or 3 for the built-in shapes).

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Sphere
    >>> ball = Sphere(0.5)
    >>> ball.dim
    3
    >>> ball(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))  # inside: -radius; outside: distance
    array([-0.5,  0.5])
    """

    dim: int = 3

    def sdf(self, x: Tensor) -> Tensor:
        """Signed distance of points to the shape's surface, negative inside.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points, ``D == self.dim``.

        Returns
        -------
        (N,) Tensor
            Signed distances, in the dtype and on the device of ``x``; differentiable in ``x``.

        Raises
        ------
        ValueError
            If ``x`` is not ``(N, self.dim)``.
        """
        raise NotImplementedError

    def __call__(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Like :meth:`sdf`, but also takes a numpy ``(N, D)`` array and returns numpy.

        Parameters
        ----------
        x : (N, D) float Tensor or ndarray
            Points; a numpy array is evaluated in float64.

        Returns
        -------
        (N,) Tensor or ndarray
            Signed distances, of the same kind as ``x``.
        """
        if isinstance(x, np.ndarray):
            return self.sdf(torch.as_tensor(x, dtype=torch.float64)).numpy()
        return self.sdf(x)

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}: expected (N, {self.dim}) points, got {tuple(x.shape)}"
            )


class Sphere(Shape):
    """Ball of ``radius`` around ``center`` (any dimension; ``dim`` from ``center``).

    Parameters
    ----------
    radius : float, optional
        Radius, > 0.
    center : (D,) sequence of float, optional
        Center; default the origin of ``dim`` dimensions.
    dim : int, optional
        Dimension when ``center`` is not given.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Sphere
    >>> Sphere(0.5, center=(1.0, 0.0, 0.0))(np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0]]))
    array([-0.5,  1.5])
    """

    def __init__(
        self, radius: float = 0.3, center: Sequence[float] | None = None, dim: int = 3
    ) -> None:
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.dim = len(center) if center is not None else dim
        self.center = _vec(center if center is not None else 0.0, self.dim)
        self.radius = float(radius)

    def sdf(self, x: Tensor) -> Tensor:
        self._check(x)
        return torch.linalg.vector_norm(x - self.center.to(x), dim=-1) - self.radius


class Circle(Sphere):
    """Disk in 2D.

    Parameters
    ----------
    radius : float, optional
        Radius, > 0.
    center : (2,) sequence of float, optional
        Center; default the origin.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Circle
    >>> Circle(0.5)(np.array([[0.0, 0.0], [0.0, 1.0]]))
    array([-0.5,  0.5])
    """

    def __init__(self, radius: float = 0.3, center: Sequence[float] | None = None) -> None:
        super().__init__(radius, center if center is not None else (0.0, 0.0), dim=2)


class Box(Shape):
    """Axis-aligned box with half side lengths ``half_size`` (any dimension).

    Parameters
    ----------
    half_size : float or (D,) sequence of float, optional
        Half side lengths, each > 0; one number for a cube.
    center : (D,) sequence of float, optional
        Center; default the origin.
    dim : int, optional
        Dimension when neither ``center`` nor a sequence ``half_size`` gives it.

    Examples
    --------
    The distance outside a corner is Euclidean, not the largest coordinate gap:

    >>> import numpy as np
    >>> from nsr.training.shapes import Box
    >>> d = Box(0.25)(np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    >>> np.allclose(d, [-0.25, 0.25, np.hypot(0.25, 0.25)])
    True
    """

    def __init__(
        self,
        half_size: Sequence[float] | float = 0.25,
        center: Sequence[float] | None = None,
        dim: int = 3,
    ) -> None:
        if center is not None:
            dim = len(center)
        elif not isinstance(half_size, (int, float)):
            dim = len(half_size)
        self.dim = dim
        self.half_size = _vec(half_size, dim)
        if (self.half_size <= 0).any():
            raise ValueError(f"half_size must be > 0, got {self.half_size.tolist()}")
        self.center = _vec(center if center is not None else 0.0, dim)

    def sdf(self, x: Tensor) -> Tensor:
        self._check(x)
        q = (x - self.center.to(x)).abs() - self.half_size.to(x)
        outside = torch.linalg.vector_norm(q.clamp(min=0), dim=-1)
        inside = q.max(dim=-1).values.clamp(max=0)
        return outside + inside


class Torus(Shape):
    """Torus around the z axis: major radius ``major``, tube radius ``minor``.

    Parameters
    ----------
    major : float, optional
        Distance from the center to the tube's center line, > 0.
    minor : float, optional
        Tube radius, > 0.
    center : (3,) sequence of float, optional
        Center; default the origin.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Torus
    >>> Torus(0.3, 0.1)(np.array([[0.3, 0.0, 0.0], [0.0, 0.0, 0.0]]))  # on the center line; the hole
    array([-0.1,  0.2])
    """

    dim = 3

    def __init__(
        self, major: float = 0.3, minor: float = 0.1, center: Sequence[float] | None = None
    ) -> None:
        if not 0 < minor or major <= 0:
            raise ValueError(f"radii must be > 0, got major={major}, minor={minor}")
        self.major, self.minor = float(major), float(minor)
        self.center = _vec(center if center is not None else 0.0, 3)

    def sdf(self, x: Tensor) -> Tensor:
        self._check(x)
        p = x - self.center.to(x)
        qx = torch.linalg.vector_norm(p[:, :2], dim=-1) - self.major
        return torch.sqrt(qx**2 + p[:, 2] ** 2) - self.minor


class Capsule(Shape):
    """Segment ``a``-``b`` thickened by ``radius`` (any dimension).

    Parameters
    ----------
    a, b : (D,) sequence of float, optional
        End points of the segment.
    radius : float, optional
        Thickness, > 0.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Capsule
    >>> Capsule((-0.2, 0.0), (0.2, 0.0), 0.1)(np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]))
    array([-0.1,  0.2,  0.4])
    """

    def __init__(
        self,
        a: Sequence[float] = (-0.2, 0.0, 0.0),
        b: Sequence[float] = (0.2, 0.0, 0.0),
        radius: float = 0.1,
    ) -> None:
        if radius <= 0 or len(a) != len(b):
            raise ValueError("capsule needs radius > 0 and end points of one dimension")
        self.dim = len(a)
        self.a, self.b, self.radius = _vec(a, self.dim), _vec(b, self.dim), float(radius)

    def sdf(self, x: Tensor) -> Tensor:
        self._check(x)
        pa, ba = x - self.a.to(x), (self.b - self.a).to(x)
        h = ((pa @ ba) / ba.dot(ba).clamp(min=1e-30)).clamp(0, 1)
        return torch.linalg.vector_norm(pa - h[:, None] * ba, dim=-1) - self.radius


class Polygon(Shape):
    """Simple polygon in 2D from its ``(M, 2)`` vertices (either orientation).

    Parameters
    ----------
    vertices : (M, 2) sequence of float
        The corners in order, ``M >= 3``; the polygon need not be convex.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Polygon
    >>> square = Polygon([[0, 0], [1, 0], [1, 1], [0, 1]])
    >>> square(np.array([[0.5, 0.5], [2.0, 0.5]]))
    array([-0.5,  1. ])
    """

    dim = 2

    def __init__(self, vertices: Sequence[Sequence[float]]) -> None:
        v = torch.as_tensor(vertices, dtype=torch.float64)
        if v.ndim != 2 or v.shape[1] != 2 or v.shape[0] < 3:
            raise ValueError(f"polygon needs (M >= 3, 2) vertices, got shape {tuple(v.shape)}")
        self.vertices = v

    def sdf(self, x: Tensor) -> Tensor:
        self._check(x)
        v = self.vertices.to(x)
        vj = torch.roll(v, 1, dims=0)  # previous vertex: edge i goes v[i-1] -> v[i]
        e = vj - v  # (M, 2)
        w = x[:, None, :] - v[None]  # (N, M, 2)
        t = ((w * e).sum(-1) / (e * e).sum(-1)).clamp(0, 1)
        b = w - t[..., None] * e
        d2 = (b * b).sum(-1).min(dim=1).values
        c1 = x[:, None, 1] >= v[None, :, 1]
        c2 = x[:, None, 1] < vj[None, :, 1]
        c3 = e[None, :, 0] * w[..., 1] > e[None, :, 1] * w[..., 0]
        flips = ((c1 & c2 & c3) | (~c1 & ~c2 & ~c3)).sum(dim=1)
        sign = 1.0 - 2.0 * (flips % 2).to(x.dtype)
        return sign * torch.sqrt(d2)


class _CSG(Shape):
    def __init__(self, shapes: Sequence[Shape]) -> None:
        shapes = list(shapes)
        if len(shapes) < 2 or len({s.dim for s in shapes}) != 1:
            raise ValueError("CSG needs at least two shapes of one dimension")
        self.shapes = shapes
        self.dim = shapes[0].dim

    def _stack(self, x: Tensor) -> Tensor:
        self._check(x)
        return torch.stack([s.sdf(x) for s in self.shapes], dim=0)  # (K, N)


class Union(_CSG):
    """Union of shapes: ``min`` of their SDFs.

    Parameters
    ----------
    shapes : sequence of Shape
        At least two shapes of one dimension.

    Examples
    --------
    Two balls of radius 0.3 centered at x = -0.2 and x = 0.2, at x = 0, -0.45 and 0.45:

    >>> import numpy as np
    >>> from nsr.training.shapes import Union, Sphere
    >>> balls = [Sphere(0.3, (-0.2, 0.0, 0.0)), Sphere(0.3, (0.2, 0.0, 0.0))]
    >>> x = np.array([[0.0, 0.0, 0.0], [-0.45, 0.0, 0.0], [0.45, 0.0, 0.0]])
    >>> Union(balls)(x)
    array([-0.1 , -0.05, -0.05])
    """

    def sdf(self, x: Tensor) -> Tensor:
        return self._stack(x).min(dim=0).values


class Intersection(_CSG):
    """Intersection of shapes: ``max`` of their SDFs.

    Parameters
    ----------
    shapes : sequence of Shape
        At least two shapes of one dimension.

    Examples
    --------
    Two balls of radius 0.3 centered at x = -0.2 and x = 0.2, at x = 0, -0.45 and 0.45:

    >>> import numpy as np
    >>> from nsr.training.shapes import Intersection, Sphere
    >>> balls = [Sphere(0.3, (-0.2, 0.0, 0.0)), Sphere(0.3, (0.2, 0.0, 0.0))]
    >>> x = np.array([[0.0, 0.0, 0.0], [-0.45, 0.0, 0.0], [0.45, 0.0, 0.0]])
    >>> Intersection(balls)(x)
    array([-0.1 ,  0.35,  0.35])
    """

    def sdf(self, x: Tensor) -> Tensor:
        return self._stack(x).max(dim=0).values


class Difference(_CSG):
    """First shape minus all others: ``max(d0, -d1, -d2, ...)``.

    Parameters
    ----------
    shapes : sequence of Shape
        At least two shapes of one dimension.

    Examples
    --------
    Two balls of radius 0.3 centered at x = -0.2 and x = 0.2, at x = 0, -0.45 and 0.45:

    >>> import numpy as np
    >>> from nsr.training.shapes import Difference, Sphere
    >>> balls = [Sphere(0.3, (-0.2, 0.0, 0.0)), Sphere(0.3, (0.2, 0.0, 0.0))]
    >>> x = np.array([[0.0, 0.0, 0.0], [-0.45, 0.0, 0.0], [0.45, 0.0, 0.0]])
    >>> Difference(balls)(x)
    array([ 0.1 , -0.05,  0.35])
    """

    def sdf(self, x: Tensor) -> Tensor:
        d = self._stack(x)
        return torch.cat([d[:1], -d[1:]], dim=0).max(dim=0).values


_AXES = {"x": 0, "y": 1, "z": 2}


def _axis_index(axis: str | int) -> int:
    if isinstance(axis, str):
        if axis not in _AXES:
            raise ValueError(f"axis must be one of 'x', 'y', 'z' (or 0, 1, 2), got {axis!r}")
        return _AXES[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be one of 'x', 'y', 'z' (or 0, 1, 2), got {axis!r}")
    return int(axis)


def _extrude(d2: Tensor, h: Tensor) -> Tensor:
    """Exact SDF of an extrusion from the profile's SDF ``d2`` ``(N,)`` and ``h = |t| - half`` ``(N,)``."""
    w = torch.stack([d2, h], -1)
    return w.max(-1).values.clamp(max=0) + torch.linalg.vector_norm(w.clamp(min=0), dim=-1)


class Cylinder(Shape):
    """Capped cylinder of ``radius`` and half length ``half_length`` along ``axis`` (exact SDF).

    Parameters
    ----------
    radius : float, optional
        Radius, > 0.
    half_length : float, optional
        Half its length along ``axis``, > 0.
    axis : {"x", "y", "z"} or {0, 1, 2}, optional
        The cylinder's axis.
    center : (3,) sequence of float, optional
        Center; default the origin.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Cylinder
    >>> Cylinder(0.1, 0.2, "z")(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]))
    array([-0.1,  0.3,  0.4])
    """

    dim = 3

    def __init__(self, radius: float = 0.1, half_length: float = 0.2, axis: str | int = "z",
                 center: Sequence[float] | None = None) -> None:  # fmt: skip
        if radius <= 0 or half_length <= 0:
            raise ValueError(f"radius and half_length must be > 0, got {radius}, {half_length}")
        self.radius, self.half_length = float(radius), float(half_length)
        self.axis = _axis_index(axis)
        self.center = _vec(center if center is not None else 0.0, 3)

    def sdf(self, x: Tensor) -> Tensor:
        self._check(x)
        p = x - self.center.to(x)
        ortho = [i for i in range(3) if i != self.axis]
        d2 = torch.linalg.vector_norm(p[:, ortho], dim=-1) - self.radius
        return _extrude(d2, p[:, self.axis].abs() - self.half_length)


class Extrusion(Shape):
    """A 2D ``profile`` shape extruded by ``half_length`` either side along ``axis`` (exact SDF
    when the profile's is, e.g. :class:`Polygon`).

    The profile's two coordinates are the remaining axes in increasing order (axis ``"y"``:
    the profile lives in ``(x, z)``); ``center`` is the value of the ``axis`` coordinate at
    mid-length.

    Parameters
    ----------
    profile : Shape
        A 2D shape.
    half_length : float, optional
        Half the extrusion length, > 0.
    axis : {"x", "y", "z"} or {0, 1, 2}, optional
        Direction of the extrusion.
    center : float, optional
        Value of the ``axis`` coordinate at mid-length.

    Examples
    --------
    A unit square extruded 0.1 either side of z = 0: a slab 0.2 thick.

    >>> import numpy as np
    >>> from nsr.training.shapes import Extrusion, Polygon
    >>> slab = Extrusion(Polygon([[0, 0], [1, 0], [1, 1], [0, 1]]), 0.1, axis="z")
    >>> slab(np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.5]]))
    array([-0.1,  0.4])
    """

    dim = 3

    def __init__(self, profile: Shape, half_length: float = 0.1, axis: str | int = "z",
                 center: float = 0.0) -> None:  # fmt: skip
        if not isinstance(profile, Shape) or profile.dim != 2:
            raise ValueError("Extrusion needs a 2D profile shape (e.g. nsr.training.shapes.Polygon)")
        if half_length <= 0:
            raise ValueError(f"half_length must be > 0, got {half_length}")
        self.profile, self.half_length = profile, float(half_length)
        self.axis, self.center = _axis_index(axis), float(center)

    def sdf(self, x: Tensor) -> Tensor:
        self._check(x)
        ortho = [i for i in range(3) if i != self.axis]
        d2 = self.profile.sdf(x[:, ortho])
        return _extrude(d2, (x[:, self.axis] - self.center).abs() - self.half_length)


def bracket() -> Shape:
    """The demo's mechanical part: an L-bracket with a thin triangular rib and four round holes.

    A base plate (0.7 x 0.44 x 0.1) and an upright plate (0.1 x 0.44 x 0.64) joined along an
    edge, a rib 0.03 thick (a triangle in the ``(x, z)`` plane extruded along ``y``) bracing
    them, two holes of radius 0.055 through the base (along ``z``) and two through the upright
    (along ``x``). Every crease is sharp; the rib is thinner than a 32^3 marching-cubes cell
    in the box ``[-0.5, 0.5]^3``. Parts overlap instead of touching, so that no internal face
    lies on the surface. The same shape as ``conf/data/bracket.yaml``.

    Returns
    -------
    Shape
        A 3D :class:`Difference`, in the box ``[-0.5, 0.5]^3``.

    Examples
    --------
    Inside the base plate, on the rim of a base hole (radius 0.055), above the upright:

    >>> import numpy as np
    >>> from nsr.training.shapes import bracket
    >>> d = bracket()(np.array([[-0.1, 0.0, -0.3], [0.28, 0.12 + 0.055, -0.3], [-0.25, 0.0, 0.4]]))
    >>> np.round(d, 3)
    array([-0.05,  0.  ,  0.08])
    """
    base = Box([0.35, 0.22, 0.05], center=[0.05, 0.0, -0.3])
    upright = Box([0.05, 0.22, 0.32], center=[-0.25, 0.0, 0.0])
    rib = Extrusion(Polygon([[-0.22, -0.27], [0.25, -0.27], [-0.22, 0.2]]), 0.015, axis="y")
    holes = [Cylinder(0.055, 0.2, "z", [0.28, y, -0.3]) for y in (-0.12, 0.12)]
    holes += [Cylinder(0.055, 0.2, "x", [-0.25, y, 0.17]) for y in (-0.12, 0.12)]
    return Difference([Union([base, upright, rib]), *holes])


def project_to_surface(shape: Shape, points: np.ndarray, steps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps ``x <- x - f(x) grad f / |grad f|^2`` onto the zero set of ``shape``.

    Exact SDFs converge in one step off creases; check ``|f|`` before trusting a point.

    Parameters
    ----------
    shape : Shape
        The shape, of dimension ``D``.
    points : (N, D) float ndarray
        Starting points.
    steps : int, optional
        Newton steps.

    Returns
    -------
    points : (N, D) float64 ndarray
        The projected points.
    residual : (N,) float64 ndarray
        ``|sdf|`` at the projected points.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Sphere
    >>> p, f = project_to_surface(Sphere(0.5), np.array([[0.1, 0.2, 0.3]]))
    >>> np.linalg.norm(p, axis=1), np.allclose(p / 0.5, np.array([[1, 2, 3]]) / np.sqrt(14)), f
    (array([0.5]), True, array([0.]))
    """
    x = torch.as_tensor(np.asarray(points, dtype=np.float64))
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        f = shape.sdf(x)
        (g,) = torch.autograd.grad(f.sum(), x)
        x = x - (f / (g * g).sum(-1).clamp(min=1e-12))[:, None] * g
    with torch.no_grad():
        f = shape.sdf(x)
    return x.detach().numpy(), f.abs().numpy()


def surface_samples(shape: Shape, n: int, bounds: Any = (-0.5, 0.5), resolution: int = 160, seed: int = 0,
                    tol: float = 1e-9) -> np.ndarray:  # fmt: skip
    """About ``n`` points ``(M, 3)`` on the true surface of a 3D ``shape`` (``|sdf| <= tol``),
    spread by area: area-weighted samples of a marching-cubes mesh of the SDF at
    ``resolution``, projected onto the zero set (:func:`project_to_surface`). Points that do
    not converge (a few, at creases) are dropped.

    Parameters
    ----------
    shape : Shape
        A 3D shape.
    n : int
        Number of samples drawn before the non-converged ones are dropped.
    bounds : float pair or (3, 2) float, optional
        The box that is meshed; the shape must lie inside it.
    resolution : int, optional
        Marching-cubes samples per axis of the mesh the points are drawn from.
    seed : int, optional
        Seed of the area-weighted sampling.
    tol : float, optional
        Largest ``|sdf|`` kept.

    Returns
    -------
    (M, 3) float64 ndarray
        Points on the surface, ``M <= n``.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.training.shapes import Sphere
    >>> pts = surface_samples(Sphere(0.3), 100, resolution=16)
    >>> len(pts) == 100, bool(np.abs(np.linalg.norm(pts, axis=1) - 0.3).max() < 1e-9)
    (True, True)
    """
    import trimesh

    from nsr.eval.marching_cubes import marching_cubes

    mesh = marching_cubes(shape, bounds, resolution, dtype=torch.float64)
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    x, f = project_to_surface(shape, np.asarray(pts))
    return x[f <= tol]
