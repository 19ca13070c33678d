"""Regularizers on the exact zero-level surface of a ReLU network, fed back into training.

Every ``k`` training steps :class:`ExactRegularizerCallback` re-extracts the exact surface
(:func:`nsr.extraction.surface.extract_mesh`, no gradients) and keeps its combinatorics
(:class:`~nsr.geometry.SurfaceStructure`). In every step it then rebuilds the positions as
differentiable functions of the *current* parameters (:func:`~nsr.geometry.differentiable_vertices`:
the same constraints and patterns, re-solved) and evaluates the chosen regularizers:

* :class:`AreaRegularizer` - total exact surface area;
* :class:`SmoothnessRegularizer` - ``sum_e len_e (1 - n_a . n_b)`` over edges shared by two
  polygons (normals exact, from the regions' patterns);
* :class:`QualityRegularizer` - penalties on short edges, small triangle angles and sliver
  polygons;
* :class:`FitRegularizer` - squared distance from points on the exact polygons (vertices and
  barycentric samples) to a target (a callable SDF, or a point set via a KD-tree);
* :class:`EikonalRegularizer` - ``(|grad f| - 1)^2`` per polygon region, exact from its pattern.

Each has a ``weight`` and a schedule (``start_step``, linear ``ramp_steps``, ``end_step``);
any list of them can be combined. A regularizer that needs a surface on a network without one
in the box, or with input dimension other than 3, warns once and contributes zero.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr import geometry as G
from nsr.extraction.guards import as_bounds
from nsr.geometry import SurfaceStructure
from nsr.pl.graph import Affine, Layer, PLGraph

try:  # Lightning is a dependency, but keep the geometry usable without importing it eagerly
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


def _zero(net: Any) -> Tensor:
    """A zero scalar attached to the parameters' graph (so ``backward`` works), ``()``."""
    graph = G.network_graph(net)
    tensors = [t for aff in (*graph.layers, graph.output) for t in (aff.bias, *aff.blocks.values())]
    table = getattr(graph.encoder, "table", None)  # a grid encoder's features are parameters too
    if isinstance(table, Tensor):
        tensors.append(table)
    return sum((t.sum() * 0.0 for t in tensors), torch.zeros((), dtype=graph.dtype, device=graph.device))


def _check_live(net: Any) -> None:
    """Refuse what has no graph live in its parameters (modules are traced live, see nsr.geometry.has_live_graph)."""
    if not G.has_live_graph(net):
        raise TypeError(
            f"exact regularizers need gradients to reach the parameters of {type(net).__name__}: pass an nn.Module "
            "(nsr's ReLUMLP, SkipMLP, ResidualMLP, GridMLP, or any piecewise-affine module, traced live), a "
            "PLGraph/PLNetwork of tensors or a (weights, biases) pair")


class ExactSurface:
    """The exact surface of fixed combinatorics, with positions differentiable in ``net``.

    Quantities are computed lazily and cached, so several regularizers share them.
    ``dtype`` is the dtype of the geometry (float64 by default; gradients flow back to the
    parameters through a differentiable cast).

    Between re-extractions the parameters move and the combinatorics go stale: a vertex is
    re-solved from the same constraints and pattern, which is exact while the vertex stays
    nearby but extrapolates wildly once its constraints have moved far (e.g. nearly parallel
    planes). A vertex is *valid* while it stays in the box and within ``max_move`` (fraction
    of the box diagonal) of its extracted position; invalid vertices are frozen at their
    extracted position (no gradient) and every polygon, edge and triangle touching one is
    left out of the regularizers (see :attr:`invalid_fraction`).

    ``frozen_jacobian``: ``J^-1`` of every vertex's constraints is computed once per structure,
    without gradient, at its first use (:func:`nsr.geometry.frozen_jacobian_inverse`), and
    each term takes a Newton step with it from the residuals (see
    :func:`nsr.geometry.differentiable_vertices`): about 2x cheaper than rebuilding ``J``
    (the 32x3 bunny's smooth term: 9 ms against 18 ms). On a fresh structure positions and
    gradients are exact; on a stale one the positions are off at second order in the
    parameter change and the gradient at first order.

    Parameters
    ----------
    net : network
        Anything :func:`nsr.geometry.network_graph` reads with gradients to its parameters
        (:func:`nsr.geometry.has_live_graph`): ReLUMLP, SkipMLP, ResidualMLP, GridMLP (positions
        and normals differentiable in its tables too), any piecewise-affine module (traced with
        ``nsr.pl.trace(module, live=True)`` in every term), graphs, networks.
    structure : SurfaceStructure
        The combinatorics of an extracted surface.
    level : float
        The level set.
    dtype : torch.dtype
        Dtype of the geometry.
    max_move : float
        Largest move of a valid vertex, as a fraction of the box diagonal.
    frozen_jacobian : bool
        Newton steps with a ``J^-1`` computed once per structure.
    polygons : (P_s,) int64 Tensor, optional
        Only these polygons of ``structure`` (a mini-batch of the surface, e.g.
        :meth:`~nsr.geometry.SurfaceStructure.edge_sample`): :attr:`structure` is then their
        :meth:`~nsr.geometry.SurfaceStructure.patch`, and only their vertices are solved.
        ``J^-1`` (``frozen_jacobian``) is still computed once per whole structure.

    Examples
    --------
    >>> import torch
    >>> from nsr import extract_mesh
    >>> from nsr.geometry import SurfaceStructure
    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import ExactSurface
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5: 8 triangles of side sqrt(0.5)
    >>> surface = ExactSurface(net, SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False)))
    >>> surface.vertices.shape, bool(surface.vertex_valid.all()), surface.invalid_fraction
    (torch.Size([6, 3]), True, 0.0)
    >>> round(float(surface.polygon_areas.sum()), 6), round(3**0.5, 6)  # 8 * sqrt(3) / 8
    (1.732051, 1.732051)
    >>> surface.region_gradients[0].abs()  # |grad f| = (1, 1, 1) on every face
    tensor([1., 1., 1.], dtype=torch.float64)
    """

    def __init__(
        self,
        net: Any,
        structure: SurfaceStructure,
        level: float = 0.0,
        dtype: torch.dtype = torch.float64,
        max_move: float = 0.05,
        frozen_jacobian: bool = False,
        polygons: Tensor | None = None,
    ) -> None:
        _check_live(net)
        self.net = net
        self._whole, self._vertex_ids = structure, None
        if polygons is not None:
            structure, self._vertex_ids = structure.patch(polygons)
        self.structure = structure
        self.level = level
        self.dtype = dtype
        self.max_move = float(max_move)
        self.frozen_jacobian = bool(frozen_jacobian)

    def _patterns(self, name: str) -> Tensor:
        """The structure's bool patterns (the geometry takes each neuron's slope on their side)."""
        return getattr(self.structure, name)

    @cached_property
    def params(self) -> PLGraph:
        """The network's graph in :attr:`dtype`, live in its parameters (see :func:`nsr.geometry.network_graph`)."""
        return G.network_graph(self.net, self.dtype)

    @cached_property
    def _solved(self) -> tuple[Tensor, Tensor]:
        s = self.structure
        inverse = None
        if self.frozen_jacobian:  # J^-1 once per (whole) structure, at its first use
            whole = self._whole
            cache = whole.__dict__.setdefault("_jacobian_inverse", {})
            key = (self.dtype, self.level)
            if key not in cache:
                cache[key] = G.frozen_jacobian_inverse(self.params, whole.constraints, whole.vertex_patterns,
                                                       whole.bounds, self.level, vertices=whole.vertices0)
            inverse = cache[key] if self._vertex_ids is None else cache[key][self._vertex_ids]
        x = G.differentiable_vertices(
            self.params, s.vertices0, s.constraints, self._patterns("vertex_patterns"), s.bounds,
            self.level,
            frozen_jacobian=self.frozen_jacobian, jacobian_inverse=inverse,
        )
        x0 = s.vertices0.to(x.dtype)
        with torch.no_grad():
            b = s.bounds.to(x.dtype)
            tol = 1e-9 * self.diagonal
            inside = ((x >= b[:, 0] - tol) & (x <= b[:, 1] + tol)).all(1)
            near = (x - x0).norm(dim=1) <= self.max_move * self.diagonal
            valid = inside & near & torch.isfinite(x).all(1)
        return torch.where(valid.unsqueeze(1), x, x0), valid

    @property
    def vertices(self) -> Tensor:
        """Differentiable vertex positions, ``(V, 3)`` (invalid ones frozen)."""
        return self._solved[0]

    @property
    def vertex_valid(self) -> Tensor:
        """``(V,)`` bool, see the class docstring."""
        return self._solved[1]

    @cached_property
    def polygon_valid(self) -> Tensor:
        """``(P,)`` bool: all vertices of the polygon valid."""
        return self.vertex_valid[self.structure.cycles].all(1)

    @cached_property
    def edge_valid(self) -> Tensor:
        """``(E,)`` bool: both end points valid."""
        return self.vertex_valid[self.structure.edges].all(1)

    @cached_property
    def triangle_valid(self) -> Tensor:
        """``(T,)`` bool: the triangle's polygon is valid."""
        return self.polygon_valid[self.structure.triangle_polygon]

    @property
    def invalid_fraction(self) -> float:
        """Fraction of polygons left out because the structure went stale."""
        p = self.polygon_valid
        return float(1.0 - p.float().mean()) if p.numel() else 0.0

    @cached_property
    def polygon_areas(self) -> Tensor:
        """Area of each polygon, ``(P,)``."""
        return G.polygon_areas(self.vertices, self.structure.cycles)

    @cached_property
    def region_gradients(self) -> Tensor:
        """Exact ``grad f`` of each polygon's region, ``(P, 3)``. With an encoder, a polygon's
        region is also a cell of the encoder's planes (the extractor cuts polygons by them): it
        is read at the mean of the polygon's extracted vertices, inside the polygon."""
        points = None
        if self.params.encoder is not None:
            s = self.structure
            points = s.vertices0[s.cycles].mean(1).to(self.params.dtype)
        return G.region_gradients(self.params, self._patterns("polygon_patterns"), points=points)

    @cached_property
    def region_normals(self) -> Tensor:
        """Exact unit normals of the polygons from their regions, ``(P, 3)``."""
        g = self.region_gradients
        return g / G.safe_norm(g).unsqueeze(-1)

    @cached_property
    def edge_lengths(self) -> Tensor:
        """Length of each edge, ``(E,)``."""
        return G.edge_lengths(self.vertices, self.structure.edges)

    @cached_property
    def triangle_angles(self) -> Tensor:
        """Interior angles of the fan triangles, ``(T, 3)`` radians."""
        return G.triangle_angles(self.vertices, self.structure.triangles)

    @cached_property
    def triangle_areas(self) -> Tensor:
        """Area of each fan triangle, ``(T,)``."""
        return G.triangle_areas(self.vertices, self.structure.triangles)

    @cached_property
    def diagonal(self) -> float:
        """Length of the box diagonal."""
        b = self.structure.bounds
        return float(torch.linalg.vector_norm(b[:, 1] - b[:, 0]))

    def sample_points(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points uniform on the valid polygons (barycentric), differentiable, ``(n, 3)``.

        Parameters
        ----------
        n : int
            Number of points.
        generator : torch.Generator, optional
            Random generator.

        Returns
        -------
        (n, 3) Tensor
            Empty when no valid polygon has area.

        Examples
        --------
        >>> import torch
        >>> from nsr import extract_mesh
        >>> from nsr.geometry import SurfaceStructure
        >>> from nsr.networks import octahedron_network
        >>> from nsr.regularizers import ExactSurface
        >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5: 8 triangles of side sqrt(0.5)
        >>> surface = ExactSurface(net, SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False)))
        >>> points = surface.sample_points(5, torch.Generator().manual_seed(0))
        >>> points.abs().sum(1)  # on the octahedron |x| + |y| + |z| = 0.5
        tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.5000], dtype=torch.float64)
        """
        s = self.structure
        w = (self.triangle_areas.detach().clamp_min(0) * self.triangle_valid).cpu()
        if n <= 0 or not bool(w.sum() > 0):
            return self.vertices[:0]
        tri = torch.multinomial(w, n, replacement=True, generator=generator)
        tri = tri.to(s.triangles.device)
        u = torch.rand(n, 2, dtype=self.vertices.dtype, generator=generator).to(tri.device)
        su = u[:, 0].sqrt()
        bary = torch.stack([1 - su, su * (1 - u[:, 1]), su * u[:, 1]], dim=1)  # (n, 3)
        corners = self.vertices[s.triangles[tri]]  # (n, 3, 3)
        return (bary.unsqueeze(-1) * corners).sum(1)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


class ExactRegularizer:
    """Base class: a scalar function of an :class:`ExactSurface`, weighted and scheduled.

    The effective weight at a training step is ``weight * ramp`` where ``ramp`` is 0 before
    ``start_step``, grows linearly to 1 over ``ramp_steps`` and is 0 again from ``end_step``.

    Parameters
    ----------
    weight : float
        Multiplies the value.
    start_step : int
        First step with a non-zero weight.
    ramp_steps : int
        Steps of the linear ramp (0: none).
    end_step : int, optional
        First step with zero weight again.
    name : str, optional
        Key of the value (default: the class's ``name``).

    Examples
    --------
    >>> from nsr.regularizers import ExactRegularizer
    >>> r = ExactRegularizer(weight=2.0, start_step=10, ramp_steps=4, end_step=100)
    >>> [r.factor(step) for step in (0, 10, 11, 13, 50, 100)]
    [0.0, 0.25, 0.5, 1.0, 1.0, 0.0]
    """

    name = "exact"

    def __init__(
        self,
        weight: float = 1.0,
        start_step: int = 0,
        ramp_steps: int = 0,
        end_step: int | None = None,
        name: str | None = None,
    ) -> None:
        self.weight = float(weight)
        self.start_step = int(start_step)
        self.ramp_steps = int(ramp_steps)
        self.end_step = None if end_step is None else int(end_step)
        if name is not None:
            self.name = name
        self._warned: set[str] = set()

    def factor(self, step: int) -> float:
        """Schedule factor in ``[0, 1]`` at ``step``.

        Parameters
        ----------
        step : int
            Training step.

        Returns
        -------
        float

        Examples
        --------
        >>> from nsr.regularizers import ExactRegularizer
        >>> ExactRegularizer(ramp_steps=10).factor(4)
        0.5
        """
        if step < self.start_step or (self.end_step is not None and step >= self.end_step):
            return 0.0
        if self.ramp_steps <= 0:
            return 1.0
        return min(1.0, (step - self.start_step + 1) / self.ramp_steps)

    def compute(self, surface: ExactSurface) -> Tensor:
        """The unweighted value, a scalar tensor (subclasses implement it).

        Parameters
        ----------
        surface : ExactSurface
            The surface.

        Returns
        -------
        () Tensor
            Differentiable in the network's parameters.
        """
        raise NotImplementedError

    def warn_once(self, key: str, message: str) -> None:
        """Warn the first time ``key`` happens for this regularizer.

        Parameters
        ----------
        key : str
            What happened.
        message : str
            The warning's text (prefixed with the regularizer's name).

        Examples
        --------
        >>> import warnings
        >>> from nsr.regularizers import AreaRegularizer
        >>> r = AreaRegularizer()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     r.warn_once("empty", "no surface")
        ...     r.warn_once("empty", "no surface")
        >>> [str(w.message) for w in caught]
        ['area regularizer: no surface']
        """
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{self.name} regularizer: {message}", RuntimeWarning, stacklevel=3)

    def __call__(self, surface: ExactSurface, step: int | None = None) -> Tensor:
        """Weighted (and, with ``step``, scheduled) value; zero with a warning on bad input."""
        f = 1.0 if step is None else self.factor(step)
        s = surface.structure
        if s.vertices0.shape[1] != 3:
            self.warn_once("dim", f"needs a 3D surface, got input dimension "
                                  f"{s.vertices0.shape[1]}; contributing zero")
            return _zero(surface.net)
        if s.n_polygons == 0:
            self.warn_once("empty", "the network has no surface in the box; contributing zero")
            return _zero(surface.net)
        if f == 0.0 or self.weight == 0.0:
            return _zero(surface.net)
        return (self.weight * f) * self.compute(surface)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(weight={self.weight}, start_step={self.start_step}, "
                f"ramp_steps={self.ramp_steps}, end_step={self.end_step})")


class AreaRegularizer(ExactRegularizer):
    """Total area of the exact surface (scalar, in squared box units).

    Parameters
    ----------
    *args, **kwargs
        As in :class:`ExactRegularizer`.

    Examples
    --------
    Shrinking the octahedron (raising its output bias ``b``) shrinks its area ``4 sqrt(3) r^2``,
    ``r = -(b + 30)``: ``dA/db = -8 sqrt(3) r``.

    >>> import torch
    >>> from nsr import extract_mesh
    >>> from nsr.geometry import SurfaceStructure
    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import AreaRegularizer, ExactSurface
    >>> net = octahedron_network(0.5)
    >>> structure = SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False))
    >>> bias = net.biases[-1].clone().requires_grad_(True)
    >>> area = AreaRegularizer().compute(ExactSurface((net.weights, net.biases[:-1] + [bias]), structure))
    >>> round(float(area.detach()), 6), round(float(torch.autograd.grad(area, bias)[0]), 6), round(-4 * 3**0.5, 6)
    (1.732051, -6.928203, -6.928203)
    """

    name = "area"

    def compute(self, surface: ExactSurface) -> Tensor:
        """Sum of the valid polygons' areas, ``()``.

        Parameters
        ----------
        surface : ExactSurface
            The surface, differentiable in the network's parameters.

        Returns
        -------
        () Tensor
            Unweighted; the class example checks it against a closed form.
        """
        return (surface.polygon_areas * surface.polygon_valid).sum()


class SmoothnessRegularizer(ExactRegularizer):
    """``sum_e len_e (1 - n_a . n_b)`` over edges shared by two polygons.

    ``normals="region"`` uses the exact region normals from the patterns, ``"positions"``
    the normals of the polygons' vertex cycles. With ``normalize`` the sum is divided by the
    total length of those edges (a length-weighted mean, invariant to scale).

    Parameters
    ----------
    *args, **kwargs
        As in :class:`ExactRegularizer`.
    normals : {"region", "positions"}
        Where the normals come from.
    normalize : bool
        Divide by the total length of the shared edges.

    Raises
    ------
    ValueError
        On an unknown ``normals``.

    Examples
    --------
    The octahedron's 12 edges of length ``sqrt(0.5)`` join faces whose normals have ``cos = 1/3``:

    >>> import torch
    >>> from nsr import extract_mesh
    >>> from nsr.geometry import SurfaceStructure
    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import ExactSurface
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5: 8 triangles of side sqrt(0.5)
    >>> surface = ExactSurface(net, SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False)))
    >>> from nsr.regularizers import SmoothnessRegularizer
    >>> round(float(SmoothnessRegularizer().compute(surface)), 6), round(12 * 0.5**0.5 * (1 - 1 / 3), 6)
    (5.656854, 5.656854)
    >>> round(float(SmoothnessRegularizer(normals="positions", normalize=True).compute(surface)), 6)
    0.666667
    """

    name = "smooth"

    def __init__(self, *args: Any, normals: str = "region", normalize: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if normals not in ("region", "positions"):
            raise ValueError(f"normals must be 'region' or 'positions', got {normals!r}")
        self.normals = normals
        self.normalize = normalize

    def compute(self, surface: ExactSurface) -> Tensor:
        """``sum_e len_e (1 - n_a . n_b)`` over the valid shared edges (or its mean), ``()``.

        Parameters
        ----------
        surface : ExactSurface
            The surface, differentiable in the network's parameters.

        Returns
        -------
        () Tensor
            Unweighted; the class example checks it against a closed form.
        """
        s = surface.structure
        inner = s.interior_edges
        if inner.numel() == 0:
            return _zero(surface.net)
        if self.normals == "region":
            n = surface.region_normals
        else:
            n = G.polygon_normals(surface.vertices, s.cycles)
        ep = s.edge_polygons[inner]
        cos = (n[ep[:, 0]] * n[ep[:, 1]]).sum(-1)
        ok = surface.polygon_valid[ep].all(1).to(cos.dtype)
        length = surface.edge_lengths[inner] * ok
        total = (length * (1.0 - cos)).sum()
        if self.normalize:
            total = total / length.sum().clamp_min(1e-30)
        return total


class QualityRegularizer(ExactRegularizer):
    """Mesh-quality penalties, each a mean of squared hinge losses (scalar).

    * short edges: ``relu(1 - len / min_edge)^2`` with ``min_edge`` a fraction of the box
      diagonal;
    * sliver triangles: ``relu(1 - angle / min_angle)^2`` over the fan triangles' angles;
    * sliver polygons: ``relu(1 - q / min_quality)^2`` with ``q = 4 pi A / L^2``.

    Parameters
    ----------
    *args, **kwargs
        As in :class:`ExactRegularizer`.
    min_edge : float
        Shortest edge not penalized, fraction of the box diagonal.
    min_angle_deg : float
        Smallest triangle angle not penalized, degrees.
    min_quality : float
        Smallest polygon quality ``4 pi A / L^2`` not penalized.
    edge_weight, angle_weight, polygon_weight : float
        Weights of the three penalties.

    Examples
    --------
    The octahedron's equilateral faces pass every threshold, until they are asked to be rounder
    than a triangle can be:

    >>> import torch
    >>> from nsr import extract_mesh
    >>> from nsr.geometry import SurfaceStructure
    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import ExactSurface
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5: 8 triangles of side sqrt(0.5)
    >>> surface = ExactSurface(net, SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False)))
    >>> from nsr.regularizers import QualityRegularizer
    >>> float(QualityRegularizer().compute(surface))
    0.0
    >>> q = 3**0.5 * 3.141592653589793 / 9  # 4 pi A / L^2 of an equilateral triangle
    >>> strict = QualityRegularizer(min_quality=2 * q, edge_weight=0, angle_weight=0)
    >>> round(float(strict.compute(surface)), 6)  # relu(1 - 1/2)^2
    0.25
    """

    name = "quality"

    def __init__(
        self,
        *args: Any,
        min_edge: float = 0.005,
        min_angle_deg: float = 10.0,
        min_quality: float = 0.1,
        edge_weight: float = 1.0,
        angle_weight: float = 1.0,
        polygon_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.min_edge = float(min_edge)
        self.min_angle = math.radians(float(min_angle_deg))
        self.min_quality = float(min_quality)
        self.edge_weight, self.angle_weight = float(edge_weight), float(angle_weight)
        self.polygon_weight = float(polygon_weight)

    def compute(self, surface: ExactSurface) -> Tensor:
        """Weighted sum of the three mean penalties over valid elements, ``()``.

        Parameters
        ----------
        surface : ExactSurface
            The surface, differentiable in the network's parameters.

        Returns
        -------
        () Tensor
            Unweighted; the class example checks it against a closed form.
        """
        s = surface.structure
        total = _zero(surface.net)
        if self.edge_weight and s.edges.shape[0]:
            lmin = self.min_edge * surface.diagonal
            pen = torch.relu(1.0 - surface.edge_lengths / lmin) ** 2
            total = total + self.edge_weight * _masked_mean(pen, surface.edge_valid)
        if self.angle_weight and s.triangles.shape[0]:
            pen = (torch.relu(1.0 - surface.triangle_angles / self.min_angle) ** 2).mean(1)
            total = total + self.angle_weight * _masked_mean(pen, surface.triangle_valid)
        if self.polygon_weight and s.n_polygons:
            q = G.polygon_isoperimetric_quality(surface.vertices, s.cycles)
            pen = torch.relu(1.0 - q / self.min_quality) ** 2
            total = total + self.polygon_weight * _masked_mean(pen, surface.polygon_valid)
        return total


class FitRegularizer(ExactRegularizer):
    """Mean squared distance from points on the exact polygons to a target surface.

    ``target`` is a callable SDF (``(M, 3) tensor -> (M,)``, differentiable in its input), or a
    point set ``(M, 3)`` (array, tensor or a path to a mesh file, sampled) whose nearest
    points are found with a KD-tree on detached positions; ``distance="plane"`` measures the
    distance to the tangent plane of the nearest target point (needs its normal; ICP's
    point-to-plane: it moves the surface along its normal, whereas the point-to-point
    distance also pulls vertices along the surface, i.e. re-arranges the network's planes,
    which is badly conditioned). The points are the vertices (with
    ``include_vertices``) and ``n_samples`` barycentric samples drawn anew each call. Set the
    target later with :meth:`set_target` (e.g. from the training data).

    Parameters
    ----------
    *args, **kwargs
        As in :class:`ExactRegularizer`.
    target : callable, (M, 3) array_like or str, optional
        A differentiable SDF, target points, or a mesh file path.
    n_samples : int
        Barycentric samples per call.
    include_vertices : bool
        Also measure the valid vertices.
    seed : int
        Seed of the samples.
    distance : {"point", "plane"}
        Point-to-point or point-to-plane distance to target points.
    normals : (M, 3) array_like, optional
        Normals of the target points (for ``"plane"``).

    Raises
    ------
    ValueError
        On an unknown ``distance`` or normals that do not match the points.

    Examples
    --------
    >>> import torch
    >>> from nsr import extract_mesh
    >>> from nsr.geometry import SurfaceStructure
    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import ExactSurface
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5: 8 triangles of side sqrt(0.5)
    >>> surface = ExactSurface(net, SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False)))
    >>> from nsr.regularizers import FitRegularizer
    >>> exact = FitRegularizer(target=lambda p: p.abs().sum(1) - 0.5, n_samples=64)  # the octahedron's own SDF
    >>> float(exact.compute(surface)) < 1e-20
    True
    >>> corners = 0.5 * torch.eye(3, dtype=torch.float64)  # the vertices +x, +y, +z
    >>> float(FitRegularizer(target=corners, n_samples=0).compute(surface))  # 3 vertices on it, 3 at 0.5 squared
    0.25
    """

    name = "fit"

    def __init__(
        self,
        *args: Any,
        target: Callable[[Tensor], Tensor] | np.ndarray | Tensor | str | None = None,
        n_samples: int = 2048,
        include_vertices: bool = True,
        seed: int = 0,
        distance: str = "point",
        normals: np.ndarray | Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if distance not in ("point", "plane"):
            raise ValueError(f"distance must be 'point' or 'plane', got {distance!r}")
        self.n_samples = int(n_samples)
        self.include_vertices = include_vertices
        self.distance = distance
        self._gen = torch.Generator().manual_seed(seed)
        self._sdf: Callable[[Tensor], Tensor] | None = None
        self._points: np.ndarray | None = None
        self._normals: np.ndarray | None = None
        self._tree: Any = None
        if target is not None:
            self.set_target(target, normals)

    @property
    def has_target(self) -> bool:
        """Whether a target is set."""
        return self._sdf is not None or self._tree is not None

    def set_target(
        self,
        target: Callable[[Tensor], Tensor] | np.ndarray | Tensor | str,
        normals: np.ndarray | Tensor | None = None,
    ) -> None:
        """Use a callable SDF or a point set ``(M, 3)`` (or a mesh file path) as the target;
        ``normals (M, 3)`` of the points are needed for ``distance="plane"``.

        Parameters
        ----------
        target : callable, (M, 3) array_like or str
            The target.
        normals : (M, 3) array_like, optional
            Normals of the target points.

        Raises
        ------
        ValueError
            If ``normals`` does not match the points.

        Examples
        --------
        >>> import numpy as np
        >>> from nsr.regularizers import FitRegularizer
        >>> fit = FitRegularizer()
        >>> fit.has_target
        False
        >>> fit.set_target(np.zeros((4, 3)))
        >>> fit.has_target
        True
        """
        if isinstance(target, str):
            import trimesh

            mesh = trimesh.load(target, force="mesh")
            pts, face = trimesh.sample.sample_surface(mesh, 100_000, seed=0)
            target, normals = np.asarray(pts), np.asarray(mesh.face_normals[face])
        if callable(target) and not isinstance(target, (np.ndarray, Tensor)):
            self._sdf, self._tree = target, None
            return
        from scipy.spatial import cKDTree

        def arr(a: Any) -> np.ndarray:
            a = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
            return np.asarray(a, dtype=np.float64).reshape(-1, 3)

        pts = arr(target)
        self._normals = None if normals is None else arr(normals)
        if self._normals is not None and self._normals.shape != pts.shape:
            raise ValueError(f"normals {self._normals.shape} do not match points {pts.shape}")
        self._points, self._tree, self._sdf = pts, cKDTree(pts), None

    def compute(self, surface: ExactSurface) -> Tensor:
        """Mean squared distance of the sampled points to the target, ``()`` (zero without a target).

        Parameters
        ----------
        surface : ExactSurface
            The surface, differentiable in the network's parameters.

        Returns
        -------
        () Tensor
            Unweighted; the class example checks it against a closed form.
        """
        if not self.has_target:
            self.warn_once("target", "no target set (set_target); contributing zero")
            return _zero(surface.net)
        parts = [surface.sample_points(self.n_samples, self._gen)]
        if self.include_vertices:
            parts.append(surface.vertices[surface.vertex_valid])
        p = torch.cat(parts, 0)
        if p.shape[0] == 0:
            return _zero(surface.net)
        if self._sdf is not None:
            d = self._sdf(p)
            return (d.to(p.dtype) ** 2).mean()
        assert self._points is not None
        _, idx = self._tree.query(p.detach().cpu().numpy())
        q = torch.as_tensor(self._points[idx], dtype=p.dtype, device=p.device)
        if self.distance == "plane":
            if self._normals is None:
                self.warn_once("normals", "distance='plane' needs target normals; using points")
            else:
                n = torch.as_tensor(self._normals[idx], dtype=p.dtype, device=p.device)
                return (((p - q) * n).sum(-1) ** 2).mean()
        return ((p - q) ** 2).sum(-1).mean()


class EikonalRegularizer(ExactRegularizer):
    """``(|grad f| - 1)^2`` on each polygon's region, exact from its pattern (scalar).

    Averaged with the polygons' (detached) areas as weights, or uniformly over polygons.

    Parameters
    ----------
    *args, **kwargs
        As in :class:`ExactRegularizer`.
    area_weighted : bool
        Weight the polygons by their areas.

    Examples
    --------
    ``|x| + |y| + |z|`` has ``|grad f| = sqrt(3)`` on every face:

    >>> import torch
    >>> from nsr import extract_mesh
    >>> from nsr.geometry import SurfaceStructure
    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import ExactSurface
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5: 8 triangles of side sqrt(0.5)
    >>> surface = ExactSurface(net, SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False)))
    >>> from nsr.regularizers import EikonalRegularizer
    >>> round(float(EikonalRegularizer().compute(surface)), 6), round((3**0.5 - 1) ** 2, 6)
    (0.535898, 0.535898)
    """

    name = "eikonal"

    def __init__(self, *args: Any, area_weighted: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.area_weighted = area_weighted

    def compute(self, surface: ExactSurface) -> Tensor:
        """Mean of ``(|grad f| - 1)^2`` over the valid polygons, ``()``.

        Parameters
        ----------
        surface : ExactSurface
            The surface, differentiable in the network's parameters.

        Returns
        -------
        () Tensor
            Unweighted; the class example checks it against a closed form.
        """
        gn = G.safe_norm(surface.region_gradients)
        pen = (gn - 1.0) ** 2
        valid = surface.polygon_valid
        if not self.area_weighted:
            return _masked_mean(pen, valid)
        w = surface.polygon_areas.detach() * valid
        return (pen * w).sum() / w.sum().clamp_min(1e-30)


def regularizer_terms(
    net: Any,
    structure: SurfaceStructure | None,
    regularizers: Sequence[ExactRegularizer],
    step: int | None = None,
    level: float = 0.0,
    out_dtype: torch.dtype | None = None,
    max_move: float = 0.05,
    dtype: torch.dtype = torch.float64,
    frozen_jacobian: bool = False,
    polygons: Tensor | None = None,
) -> dict[str, Tensor]:
    """Evaluate ``regularizers`` on the surface of fixed ``structure`` with ``net``'s parameters.

    Returns ``{name: weighted scalar}``; a missing surface (``structure is None``) gives zeros
    with a warning per regularizer. ``out_dtype`` casts the values (e.g. to the loss dtype);
    ``max_move``, ``dtype`` (of the geometry), ``frozen_jacobian`` and ``polygons`` (a
    mini-batch of the surface) as in :class:`ExactSurface`.

    Parameters
    ----------
    net : network
        Anything :func:`nsr.geometry.network_graph` reads.
    structure : SurfaceStructure or None
        The surface's combinatorics.
    regularizers : sequence of ExactRegularizer
        The terms.
    step : int, optional
        Training step for the schedules (``None``: full weight).
    level, out_dtype, max_move, dtype, frozen_jacobian, polygons
        See above.

    Returns
    -------
    dict of str to () Tensor

    Examples
    --------
    >>> from nsr import extract_mesh
    >>> from nsr.geometry import SurfaceStructure
    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import AreaRegularizer, EikonalRegularizer, regularizer_terms
    >>> net = octahedron_network(0.5)
    >>> structure = SurfaceStructure.from_mesh(extract_mesh(net, (-1, 1), progress=False))
    >>> terms = regularizer_terms(net, structure, [AreaRegularizer(weight=0.5), EikonalRegularizer()])
    >>> {k: round(float(v), 4) for k, v in terms.items()}
    {'area': 0.866, 'eikonal': 0.5359}
    """
    return _evaluate(net, structure, regularizers, step, level, out_dtype, max_move, dtype,
                     frozen_jacobian, polygons)[0]


def _evaluate(
    net: Any,
    structure: SurfaceStructure | None,
    regularizers: Sequence[ExactRegularizer],
    step: int | None,
    level: float,
    out_dtype: torch.dtype | None,
    max_move: float,
    dtype: torch.dtype = torch.float64,
    frozen_jacobian: bool = False,
    polygons: Tensor | None = None,
) -> tuple[dict[str, Tensor], ExactSurface | None]:
    out: dict[str, Tensor] = {}
    surface = None
    if structure is None:
        for r in regularizers:
            r.warn_once("empty", "the network has no surface in the box; contributing zero")
            out[r.name] = _zero(net)
    else:
        surface = ExactSurface(net, structure, level=level, dtype=dtype, max_move=max_move,
                               frozen_jacobian=frozen_jacobian, polygons=polygons)
        for r in regularizers:
            out[r.name] = r(surface, step)
    if out_dtype is not None:
        out = {k: v.to(out_dtype) for k, v in out.items()}
    return out, surface


class ExactRegularizerCallback(Callback):
    """Feed exact-surface regularizers back into training.

    On ``setup`` it appends :meth:`term` to ``pl_module.regularizer_terms`` (nsr's training
    module adds the sum of the returned values to the loss and logs each as ``reg/<name>``).
    Every ``every_n_steps`` steps it re-extracts the surface of ``pl_module.net`` under
    ``no_grad`` (``extract_mesh(..., mode="track", dtype=float64)``) and keeps its
    combinatorics; :meth:`term` re-solves the positions with the current parameters.
    ``bounds`` is ``(D, 2)``, a scalar half-width, or ``None`` for the module's ``bounds``
    attribute (else the datamodule's ``box``, else ``[-1, 1]^D``); ``extract_kwargs`` go to
    ``extract_mesh``: the default ``mode="track"`` grows the surface from the sign changes of
    a 32^3 grid (``seeds``; 2x cheaper than surface mode on a 32x3 net; a component that
    no seed reaches is left out of the regularizers), ``mode="surface"`` is complete.
    Vertices that moved more than ``max_move`` (see :class:`ExactSurface`) are left out;
    when more than ``refresh_invalid`` of the polygons are, the surface is re-extracted as
    soon as possible, whatever ``every_n_steps`` says.

    Cost controls:

    * ``term_every_n_steps = k``: the regularizers enter the loss only in steps
      ``step % k == 0`` (other steps return no term, so they cost nothing), and then with
      their weights multiplied by ``k``: the regularizers' gradient summed over ``k`` steps is
      the same as with ``k = 1`` at the same weight, so the weights keep their meaning.
      With Adam that k-times larger gradient once per ``k`` steps inflates the second-moment
      estimates and slows the data term (smoothness on the bunny, 6 runs: Chamfer-L1
      +27 +- 18% with ``k = 10`` against +6 +- 5% with ``k = 1``); ``reuse_gradient`` avoids
      the spike but not the staleness.
    * ``reuse_gradient``: with ``term_every_n_steps = k``, the term's gradient (weights x 1)
      is computed in its own backward pass in the term step and added to the parameters'
      gradients in that step and the ``k - 1`` steps after it (``on_before_optimizer_step``,
      before gradient clipping): every step sees the regularizers' gradient, at most
      ``k - 1`` steps old, for the cost of one term per ``k`` steps. The logged ``reg/<name>``
      values are then detached (the gradient is applied separately).
    * ``background``: ``"process"`` (or ``true``) or ``"thread"``: the re-extraction runs in
      one worker on a snapshot of the parameters (cloned in the training thread; the worker
      never reads the live module) while training goes on; the new combinatorics are swapped
      in at the first step after the worker is done (the structure is then a few steps old,
      which the re-solve handles as any stale structure). A worker *process* (spawned, one
      torch thread) does not compete for the training thread's GIL; a worker thread does
      (the extraction is partly Python). The process runs at niceness ``worker_nice``: on a
      machine without an idle core a positive value keeps it from slowing training, but
      starves it. A spawned process needs the calling script's
      ``if __name__ == "__main__":`` guard. The worker is started (and its imports done) from
      ``on_fit_start``; the first extraction is synchronous, so the regularizers apply from
      the first step. ``on_fit_end`` (and :meth:`close`) waits for a running extraction and
      stops the worker. ``false`` extracts synchronously in ``on_train_batch_start``.
    * ``dtype``: dtype of the differentiable geometry (``"float32"`` halves the term's cost
      on CPU; the extraction itself is always float64).
    * ``frozen_jacobian``: see :class:`ExactSurface` (the term several times cheaper).
    * ``surface_batch = n``: each term sees a random patch of the surface instead of all of
      it, the polygons on both sides of ``n`` shared edges drawn anew every step
      (:meth:`~nsr.geometry.SurfaceStructure.edge_sample`), as the data term sees a batch of
      points: the cost of a term no longer grows with the surface. The normalized terms
      (smoothness with ``normalize``, fit, quality, eikonal) are means, so their weights keep
      their meaning; sums (area, smoothness without ``normalize``) shrink with the patch. A
      surface without shared edges is taken whole.

    Costs are logged as ``reg_cost/extract_s``, ``reg_cost/term_s``, ``reg_cost/polygons``,
    ``reg_cost/invalid_fraction``, ``reg_cost/lag_steps`` (age of the structure in steps),
    ``reg_cost/extractions`` (count so far) and accumulated in :attr:`stats`.

    Parameters
    ----------
    regularizers : sequence or mapping of ExactRegularizer
        The terms (``None`` entries are dropped).
    every_n_steps : int
        Steps between re-extractions.
    bounds : (D, 2) array_like, float or None
        The box (see above).
    level : float
        The level set.
    max_vertices : int, optional
        Skip the regularizers while the surface has more vertices.
    extract_kwargs : mapping, optional
        Passed to ``extract_mesh``.
    max_move : float
        See :class:`ExactSurface`.
    refresh_invalid : float
        Fraction of left-out polygons that triggers a re-extraction.
    term_every_n_steps : int
        See the cost controls above.
    background : bool or {"thread", "process"}
        See the cost controls above.
    dtype : torch.dtype or str
        Dtype of the differentiable geometry.
    frozen_jacobian : bool
        See :class:`ExactSurface`.
    worker_nice : int
        Niceness of a worker process.
    reuse_gradient : bool
        See the cost controls above.
    surface_batch : int, optional
        Shared edges per term (see the cost controls above); ``None``: the whole surface.
    seed : int
        Seed of the patches drawn with ``surface_batch``.

    Raises
    ------
    ValueError
        On a step count below 1, a ``surface_batch`` below 1, an unknown ``background`` or a
        non-float ``dtype``.

    Examples
    --------
    Outside a trainer, :meth:`term` extracts on first use and returns the weighted terms:

    >>> from nsr.networks import octahedron_network
    >>> from nsr.regularizers import ExactRegularizerCallback, SmoothnessRegularizer
    >>> callback = ExactRegularizerCallback([SmoothnessRegularizer(weight=0.1)], bounds=(-1, 1), every_n_steps=5)
    >>> {k: round(float(v), 4) for k, v in callback.term(octahedron_network(0.5)).items()}
    {'smooth': 0.5657}

    In training: ``L.Trainer(callbacks=[callback])`` with nsr's
    :class:`~nsr.training.lightning.ImplicitShapeModule`, which adds the terms to its loss.
    """

    def __init__(
        self,
        regularizers: Sequence[ExactRegularizer] | Mapping[str, ExactRegularizer],
        every_n_steps: int = 10,
        bounds: Any = None,
        level: float = 0.0,
        max_vertices: int | None = None,
        extract_kwargs: Mapping[str, Any] | None = None,
        max_move: float = 0.05,
        refresh_invalid: float = 0.2,
        term_every_n_steps: int = 1,
        background: bool | str = False,
        dtype: torch.dtype | str = torch.float64,
        frozen_jacobian: bool = False,
        worker_nice: int = 10,
        reuse_gradient: bool = False,
        surface_batch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(regularizers, Mapping):
            regularizers = list(regularizers.values())
        self.regularizers = [r for r in regularizers if r is not None]
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if term_every_n_steps < 1:
            raise ValueError(f"term_every_n_steps must be >= 1, got {term_every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.term_every_n_steps = int(term_every_n_steps)
        self.reuse_gradient = bool(reuse_gradient)
        if surface_batch is not None and (isinstance(surface_batch, bool) or not float(surface_batch).is_integer()
                                          or surface_batch < 1):
            raise ValueError(f"surface_batch must be a whole number >= 1 (or None: the whole surface), "
                             f"got {surface_batch!r}")
        self.surface_batch = None if surface_batch is None else int(surface_batch)
        self._patch_gen = torch.Generator().manual_seed(int(seed))
        self._cached_grads: list[tuple[Tensor, Tensor]] = []
        if background is True:
            background = "process"
        if background not in (False, None, "thread", "process"):
            raise ValueError(f"background must be false, 'thread' or 'process', got {background!r}")
        self.background: str | bool = background or False
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
        self.frozen_jacobian = bool(frozen_jacobian)
        self.worker_nice = int(worker_nice)
        self.bounds = bounds
        self.level = float(level)
        self.max_vertices = max_vertices
        self.extract_kwargs = {"level": float(level), **(extract_kwargs or {})}
        self.max_move, self.refresh_invalid = float(max_move), float(refresh_invalid)
        self._stale = False
        self.structure: SurfaceStructure | None = None
        self._extracted_at: int | None = None  # step of the parameters of self.structure
        self._requested_at: int | None = None  # step of the last extraction started
        self._last_extract_s = 0.0
        self._warned: set[str] = set()
        self._trainer: Any = None
        self._executor: Executor | None = None
        self._job: Future | None = None
        self._job_step = 0
        self._job_device = torch.device("cpu")
        self.stats = {"extractions": 0, "extract_s": 0.0, "terms": 0, "term_s": 0.0,
                      "background_extractions": 0, "wait_s": 0.0}

    # -- Lightning hooks ---------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str | None = None) -> None:
        """Register :meth:`term` with the module (once).

        Parameters
        ----------
        trainer : lightning.Trainer
            The trainer.
        pl_module : LightningModule
            Needs a ``regularizer_terms`` list (nsr's :class:`~nsr.training.lightning.ImplicitShapeModule`).
        stage : str, optional
            Lightning's stage name.
        """
        terms = getattr(pl_module, "regularizer_terms", None)
        if terms is None:
            self._warn("terms", f"{type(pl_module).__name__} has no `regularizer_terms` list; "
                                "exact regularizers are not applied")
            return
        self._trainer = trainer
        if self.term not in terms:
            terms.append(self.term)
        fit = [r for r in self.regularizers if isinstance(r, FitRegularizer) and not r.has_target]
        if fit:
            target = _find_target(trainer, pl_module)
            if target is not None:
                pts, normals = target if isinstance(target, tuple) else (target, None)
                for r in fit:
                    r.set_target(pts, normals)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Re-extract the surface every ``every_n_steps`` steps (or start/collect a worker).

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        batch : Any
        batch_idx : int
        """
        step = int(trainer.global_step)
        if not self.background or self._extracted_at is None:
            due = self._extracted_at is None or step - self._extracted_at >= self.every_n_steps
            if due or self._stale:
                self.refresh(pl_module, step)
            return
        self._collect()
        if self._job is None:
            last = self._requested_at
            if last is None or self._stale or step - last >= self.every_n_steps:
                self._submit(pl_module, step)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Start the background worker early (a spawned process imports torch first).

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        """
        if self.background and self._executor is None:
            self._executor = _make_executor(self.background, self.worker_nice)
            self._executor.submit(int, 0)  # starts the worker process
            _renice_workers(self._executor, self.worker_nice)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Wait for a running background extraction and stop the worker.

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        """
        self.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str | None = None) -> None:
        """Stop the worker (see :meth:`close`).

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        stage : str, optional
        """
        self.close()

    def close(self) -> None:
        """Wait for a running background extraction (keeping its result) and stop the worker."""
        if self._job is not None:
            t0 = time.perf_counter()
            try:
                self._job.result()
            finally:
                self.stats["wait_s"] += time.perf_counter() - t0
            self._collect()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __getstate__(self) -> dict[str, Any]:  # the worker and its job stay in this process
        state = self.__dict__.copy()
        state["_executor"], state["_job"], state["_cached_grads"] = None, None, []
        return state

    # -- work ----------------------------------------------------------------------------
    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"ExactRegularizerCallback: {message}", RuntimeWarning, stacklevel=3)

    def _bounds(self, pl_module: Any, dim: int) -> np.ndarray:
        b = self.bounds if self.bounds is not None else getattr(pl_module, "bounds", None)
        if b is None:  # nsr's ShapeDataModule trains in [-box, box]^dim
            b = getattr(getattr(self._trainer, "datamodule", None), "box", None)
        return as_bounds((-1.0, 1.0) if b is None else b, dim)

    def _extract(self, pl: Any, bounds: np.ndarray) -> tuple[SurfaceStructure | None, float]:
        structure, seconds, n_big = _extract_structure(pl, bounds, self.extract_kwargs,
                                                       self.max_vertices)
        self._warn_big(n_big)
        return structure, seconds

    def _warn_big(self, n_big: int) -> None:
        if n_big:
            self._warn("big", f"surface has {n_big} vertices > max_vertices="
                              f"{self.max_vertices}; skipping regularizers until it shrinks")

    def _snapshot(self, pl_module: Any) -> Any:
        """The network as a :class:`~nsr.networks.PLNetwork` (plain MLPs) or a
        :class:`~nsr.pl.PLGraph` (skip, residual, grid, traced modules, graphs; an encoder with a
        cloned table) of cloned, detached tensors, numbered like the graph the geometry reads
        (:func:`nsr.geometry.network_graph`)."""
        from nsr.networks import PLNetwork, ReLUMLP, as_network

        net = getattr(pl_module, "net", pl_module)
        if isinstance(net, PLGraph) or (isinstance(net, torch.nn.Module) and not isinstance(net, ReLUMLP)):
            return _detached_graph(G.network_graph(net))
        pl = as_network(net)
        with torch.no_grad():
            return PLNetwork([w.detach().clone() for w in pl.weights],
                             [b.detach().clone() for b in pl.biases])

    def refresh(self, pl_module: Any, step: int = 0) -> None:
        """Re-extract the surface of ``pl_module.net`` now and keep its combinatorics.

        Parameters
        ----------
        pl_module : module or network
            Its ``net`` (or itself) is extracted.
        step : int
            The training step of these parameters.

        Examples
        --------
        >>> from nsr.networks import octahedron_network
        >>> from nsr.regularizers import AreaRegularizer, ExactRegularizerCallback
        >>> callback = ExactRegularizerCallback([AreaRegularizer()], bounds=(-1, 1))
        >>> callback.refresh(octahedron_network(0.5))
        >>> callback.structure.n_polygons, callback.stats["extractions"]
        (8, 1)
        """
        if self._job is not None:  # a background result would be older: drop it
            self._job.result()
            self._job = None
        pl = self._snapshot(pl_module)
        dim = pl.in_dim
        self._extracted_at = self._requested_at = step
        self._stale = False
        if dim != 3:
            self._warn("dim", f"exact regularizers need a 3D network, got input dimension {dim}; "
                              "contributing zero")
            self.structure = None
            return
        self.structure, self._last_extract_s = self._extract(pl, self._bounds(pl_module, dim))
        self.stats["extractions"] += 1
        self.stats["extract_s"] += self._last_extract_s

    def _submit(self, pl_module: Any, step: int) -> None:
        pl = self._snapshot(pl_module)  # in the training thread, before the optimizer moves on
        if pl.in_dim != 3:
            self.refresh(pl_module, step)
            return
        bounds = self._bounds(pl_module, 3)
        if self._executor is None:
            self._executor = _make_executor(self.background, self.worker_nice)
        if self.background == "thread":
            self._job = self._executor.submit(_extract_structure, pl, bounds,
                                              self.extract_kwargs, self.max_vertices)
        else:  # numpy in, numpy out: nothing of the live module crosses the process boundary
            encoder = None
            if isinstance(pl, PLGraph):  # an encoder (its cloned table) travels pickled, as to surface workers
                weights, biases = {k: v.numpy() for k, v in pl.layer_state().items()}, None
                encoder = None if pl.encoder is None else pl.encoder.to(device="cpu")
            else:
                weights, biases = [w.cpu().numpy() for w in pl.weights], [b.cpu().numpy() for b in pl.biases]
            self._job = self._executor.submit(_extract_in_process, weights, biases, bounds, self.extract_kwargs,
                                              self.max_vertices, encoder)
            self._job_device = pl.device
            _renice_workers(self._executor, self.worker_nice)
        self._job_step = self._requested_at = step
        self._stale = False

    def _collect(self) -> None:
        """Swap in a finished background extraction (re-raises its exception)."""
        job = self._job
        if job is None or not job.done():
            return
        self._job = None
        structure, seconds, n_big = job.result()
        self._warn_big(n_big)
        if isinstance(structure, dict):  # from a worker process
            structure = SurfaceStructure(**{k: torch.from_numpy(v).to(self._job_device)
                                            for k, v in structure.items()})
        self.structure, self._extracted_at = structure, self._job_step
        self._last_extract_s = seconds
        self.stats["extractions"] += 1
        self.stats["background_extractions"] += 1
        self.stats["extract_s"] += seconds

    def term(self, pl_module: Any) -> dict[str, Tensor]:
        """Regularizer values with the current parameters, ``{name: scalar}`` (``{}`` in the
        steps skipped by ``term_every_n_steps``).

        Parameters
        ----------
        pl_module : module or network
            Its ``net`` (or itself) is evaluated; extracted first if never extracted.

        Returns
        -------
        dict of str to () Tensor
            Weighted values, differentiable in the parameters (detached with ``reuse_gradient``).

        Examples
        --------
        >>> from nsr.networks import octahedron_network
        >>> from nsr.regularizers import AreaRegularizer, ExactRegularizerCallback
        >>> callback = ExactRegularizerCallback([AreaRegularizer()], bounds=(-1, 1))
        >>> terms = callback.term(octahedron_network(0.5))
        >>> round(float(terms["area"]), 6), round(3**0.5, 6)
        (1.732051, 1.732051)
        """
        net = getattr(pl_module, "net", pl_module)
        step = _global_step(pl_module)
        if step % self.term_every_n_steps != 0:
            return {}
        if self._extracted_at is None:
            self.refresh(pl_module, step)
        t0 = time.perf_counter()
        patch = None
        if self.surface_batch is not None and self.structure is not None:
            patch = self.structure.edge_sample(self.surface_batch, self._patch_gen)
            if len(patch) == 0:  # no shared edge to draw (isolated polygons): the whole surface
                patch = None
        terms, surface = _evaluate(net, self.structure, self.regularizers, step, self.level,
                                   _net_dtype(net), self.max_move, self.dtype, self.frozen_jacobian, patch)
        if self.reuse_gradient:
            terms = self._cache_gradient(pl_module, terms)
        elif self.term_every_n_steps > 1:
            terms = {k: v * float(self.term_every_n_steps) for k, v in terms.items()}
        dt = time.perf_counter() - t0
        invalid = 0.0 if surface is None else surface.invalid_fraction
        if invalid > self.refresh_invalid:
            self._stale = True  # re-extract as soon as possible
        self.stats["terms"] += 1
        self.stats["term_s"] += dt
        n_poly = 0 if self.structure is None else self.structure.n_polygons
        lag = float(step - self._extracted_at) if self._extracted_at is not None else 0.0
        for key, val in (("extract_s", self._last_extract_s), ("term_s", dt),
                         ("polygons", float(n_poly)), ("invalid_fraction", invalid),
                         ("lag_steps", lag), ("extractions", float(self.stats["extractions"]))):
            try:
                pl_module.log(f"reg_cost/{key}", val, on_step=True, on_epoch=False)
            except Exception:  # not attached to a trainer, or logging not allowed here
                pass
        return terms


    def _cache_gradient(self, pl_module: Any, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backward the terms on their own and keep the gradient for
        :meth:`on_before_optimizer_step`; return the values detached."""
        params = [p for p in getattr(pl_module, "net", pl_module).parameters() if p.requires_grad]
        total = sum(terms.values())
        self._cached_grads = []
        if params and isinstance(total, Tensor) and total.requires_grad:
            grads = torch.autograd.grad(total, params, allow_unused=True)
            self._cached_grads = [(p, g) for p, g in zip(params, grads) if g is not None]
        return {k: v.detach() for k, v in terms.items()}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Add the last term's gradient (``reuse_gradient``) to every step's gradients.

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        optimizer : torch.optim.Optimizer
        """
        for p, g in self._cached_grads:
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)


def _extract_structure(
    pl: Any, bounds: np.ndarray, extract_kwargs: Mapping[str, Any], max_vertices: int | None
) -> tuple[SurfaceStructure | None, float, int]:
    """Extract the surface of ``pl`` (any thread): structure (``None`` when empty or too big),
    seconds, and the vertex count when it exceeded ``max_vertices`` (else 0).

    Track mode builds the structure from the walked polygons directly (no
    :class:`~nsr.extraction.mesh.ExactMesh` and its checks in between: 0.15 s instead of 0.17 s for a
    32x3 bunny); other modes, extra ``extract_mesh`` options, and track mode where it cannot
    answer (a degenerate vertex, no seed) go through ``extract_mesh``.
    """
    from nsr.extraction.surface import extract_mesh

    t0 = time.perf_counter()
    kw = {"mode": "track", **extract_kwargs}
    if kw["mode"] == "track":  # a 32^3 seed grid instead of extract_mesh's 64^3: cheaper, enough for the bunny
        kw.setdefault("seeds", 32)
    structure, n_big = None, 0
    with torch.no_grad():
        try:
            tracked = _track_structure(pl, bounds, kw["seeds"], kw.get("level", 0.0)) \
                if kw["mode"] == "track" and set(kw) <= {"mode", "seeds", "level"} else "not tried"
        except NotImplementedError as err:  # track mode without encoder support: the complete surface mode
            tracked = str(err)
            kw = {k: v for k, v in kw.items() if k != "seeds"} | {"mode": "surface"}
        if isinstance(tracked, str):
            try:
                mesh = extract_mesh(pl, bounds, dtype=torch.float64, device=pl.device, progress=False, **kw)
            except MemoryError as err:
                if getattr(pl, "encoder", None) is None:
                    raise
                raise MemoryError(
                    f"exact regularizers re-extract the surface of this encoder network in surface mode ({tracked}), "
                    "which cuts the box by every plane of the grid first; this grid is too fine for that: train "
                    f"with a coarser grid (fewer levels, lower max_resolution) or without the regularizer. {err}"
                ) from err
            if not mesh.is_empty and len(mesh.polygons):
                structure = SurfaceStructure.from_mesh(mesh, device=pl.device)
        else:
            structure = tracked
    if structure is not None and max_vertices is not None and structure.n_vertices > max_vertices:
        structure, n_big = None, structure.n_vertices
    return structure, time.perf_counter() - t0, n_big


def _track_structure(pl: Any, bounds: np.ndarray, seeds: Any, level: float) -> SurfaceStructure | None | str:
    """The structure of the surface tracked from seeds (:func:`nsr.extraction.surface.track_polygons`),
    ``None`` when it is empty, or a string saying why track mode cannot answer (the caller
    falls back to ``extract_mesh``, which then resolves it in surface mode)."""
    from nsr.extraction.polygons import weld_tracks
    from nsr.extraction.surface import track_polygons
    from nsr.extraction.tracking import track_patterns

    pl = pl.to(dtype=torch.float64)
    tr, why = track_polygons(pl, np.asarray(bounds, dtype=np.float64), level, seeds=seeds)
    if tr is None:
        return why
    if len(tr["key"]) == 0:
        return None
    w = weld_tracks(pl, tr)
    return SurfaceStructure.from_polygons(w["vertices"], w["cycles"], w["vertex_constraints"],
                                          w["vertex_patterns"], track_patterns(tr),
                                          torch.as_tensor(bounds, dtype=torch.float64, device=pl.device))


def _extract_in_process(
    weights: list[np.ndarray] | dict[str, np.ndarray], biases: list[np.ndarray] | None, bounds: np.ndarray,
    extract_kwargs: Mapping[str, Any], max_vertices: int | None, encoder: Any = None,
) -> tuple[dict[str, np.ndarray] | None, float, int]:
    """:func:`_extract_structure` in a worker process, numpy in and out (``weights`` a
    :meth:`PLGraph.layer_state` as numpy, ``biases`` ``None`` and ``encoder`` the graph's, for a graph)."""
    from dataclasses import fields

    from nsr.networks import PLNetwork

    if isinstance(weights, dict):
        pl = PLGraph.from_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, encoder)
    else:
        pl = PLNetwork([torch.from_numpy(w) for w in weights], [torch.from_numpy(b) for b in biases])
    structure, seconds, n_big = _extract_structure(pl, bounds, extract_kwargs, max_vertices)
    if structure is None:
        return None, seconds, n_big
    return ({f.name: getattr(structure, f.name).numpy() for f in fields(structure)},
            seconds, n_big)


def _detached_graph(graph: PLGraph) -> PLGraph:
    """A copy of ``graph`` of cloned, detached tensors (what a background extraction may read);
    an encoder with a ``table`` (a grid encoder) gets a cloned, detached table."""
    def parts(aff: Any) -> tuple[dict[int, Tensor], Tensor]:
        return {k: w.detach().clone() for k, w in aff.blocks.items()}, aff.bias.detach().clone()

    layers = [Layer(*parts(layer), layer.neg.detach().clone(), layer.pos.detach().clone()) for layer in graph.layers]
    encoder = graph.encoder
    if isinstance(getattr(encoder, "table", None), Tensor):
        encoder = copy.copy(encoder)
        encoder.table = encoder.table.detach().clone()
    return PLGraph(graph.in_dim, layers, Affine(*parts(graph.output)), graph.transform, encoder)


def _init_worker(threads: int, niceness: int) -> None:
    torch.set_num_threads(threads)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        pass
    warnings.simplefilter("ignore")


def _renice_workers(executor: Executor, niceness: int) -> None:
    """Lower the priority of the worker processes from the start (the initializer only runs
    after the spawned interpreter has imported torch, seconds of CPU)."""
    for pid in list(getattr(executor, "_processes", None) or {}):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
        except (AttributeError, OSError):  # pragma: no cover - not on every platform
            pass


def _make_executor(kind: str | bool, niceness: int = 10) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="nsr-extract")
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(1, niceness))


def _net_dtype(net: Any) -> torch.dtype:
    """The dtype of the network's parameters (the loss's)."""
    if isinstance(net, torch.nn.Module):
        p = next(iter(net.parameters()), None)
        if p is not None:
            return p.dtype
    return G.network_graph(net).dtype


def _global_step(pl_module: Any) -> int:
    try:
        return int(pl_module.trainer.global_step)
    except Exception:
        return 0


_TARGET_NAMES = ("target_points", "surface_points", "points")


def _find_target(trainer: Any, pl_module: Any, n_points: int = 100_000) -> Any:
    """A fit target: surface points (or an ``sdf`` callable) of the module or data module.

    nsr's ``ShapeDataModule`` has a ``source`` with ``sample_surface(n, generator)``; its
    samples (box units) are used as the target point set, returned as ``(points, normals)``.
    """
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    for h in (pl_module, dm):
        if h is None:
            continue
        for name in _TARGET_NAMES:
            val = getattr(h, name, None)
            if isinstance(val, (np.ndarray, Tensor)) and val.ndim == 2 and val.shape[1] == 3:
                return val
        sdf = getattr(h, "target_sdf", None)
        if callable(sdf):
            return sdf
    source = getattr(dm, "source", None)
    if source is not None and hasattr(source, "sample_surface"):
        try:
            pts = source.sample_surface(n_points, torch.Generator().manual_seed(0))
        except Exception as err:  # noqa: BLE001 - a missing target only disables the term
            warnings.warn(f"fit regularizer: sampling the target failed ({err})",
                          RuntimeWarning, stacklevel=2)
            return None
        normals = None
        if isinstance(pts, (tuple, list)):
            pts, normals = pts[0], (pts[1] if len(pts) > 1 else None)
        if isinstance(pts, (np.ndarray, Tensor)) and pts.ndim == 2 and pts.shape[1] == 3:
            ok = isinstance(normals, (np.ndarray, Tensor)) and normals.shape == pts.shape
            return (pts, normals) if ok else pts
    return None
