"""Surface mode on a simplex grid whose levels nest: the encoder's cells written down, each its own tile.

A simplex-grid encoder (:mod:`nsr.pl.encoding`) whose resolutions all divide the finest one is
affine on every simplex of the Kuhn triangulation of its finest grid (``D!`` simplices per cube),
and those simplices are the cells of the arrangement of all its planes. Cutting box tiles by the
planes one at a time (:mod:`nsr.extraction.encoder_split`) meets ``D (D + 1) / 2`` planes through
every grid point, which the sign rule resolves into many coincident skeleton vertices (about 83
per grid point on a trained bunny network: 160 of its 180 s). Here the simplices are written down
instead. Every simplex the output may cross (interval and linear bounds from the exact range of the
first layer at its corners, per block of cubes, per cube, then per simplex) becomes a tile of its own, its ``D + 1``
corners each on ``D`` of its facets, and the neurons cut it as they cut any tile
(:func:`nsr.extraction.subdivide.split_by_layers`).

A simplex's facets are planes of the encoder (constraint ids shared by the simplices on both
sides, so the mesh welds across simplices by identity,
:func:`nsr.extraction.polygons._weld_on_grid_lines` where three planes meet in a grid line) or
facets of the box. They are its *walls* (:func:`nsr.extraction.skeleton.wall_sides`): it lies on
one side of each, given by its sign bits on every encoder plane (``tile_bits``, the side of its
interior, constant over the simplex), so a face is paired, a region formed and a polygon edge
given only on the inside.

Simplex ``sigma`` (a permutation of the axes) of the cube at ``c`` is
``{u : 1 >= f[sigma[0]] >= ... >= f[sigma[D-1]] >= 0}`` in grid coordinates ``u``, ``f = u - c``.
Its corners are ``v_m = c + e[sigma[0]] + ... + e[sigma[m-1]]``, and its facet ``j``, opposite
``v_j``, is ``f[sigma[0]] = 1`` (``j = 0``), ``f[sigma[j-1]] = f[sigma[j]]`` (``0 < j < D``) or
``f[sigma[D-1]] = 0`` (``j = D``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr.extraction.bits import bit_values, n_words
from nsr.extraction.memory import _HELD_FACTOR, _chunks
from nsr.extraction.polygons import _Arrays
from nsr.extraction.progress import _progress
from nsr.extraction.pruning import TileBounds, may_reach
from nsr.extraction.skeleton import _Buffer, _Skeleton
from nsr.extraction.subdivide import split_by_layers
from nsr.pl.bounds import frontier, interval_bounds, output_bounds, region_bounds
from nsr.pl.encoding import SimplexGridEncoder
from nsr.pl.graph import ENCODED, INPUT, PLGraph
from nsr.pl.layout import ConstraintLayout

# Simplices subdivided together (a batch's skeleton starts with D + 1 vertices per simplex).
SIMPLEX_BATCH = 2**17
# Rows reserved per simplex for a batch's vertices and edges: the grid_cpu bunny's first layer (16 neurons)
# leaves about 15 vertices and 30 edges per simplex kept; buffers grown row by row instead copied
# everything they held 67 times (2.5 of its 21 s at one thread).
RESERVE_VERTICES, RESERVE_EDGES = 16, 32
# Regions of a simplex are pruned one by one from layer 1 (box tiles: layer 2) when layer 1 has at least
# this many neurons: each region the bounds drop is then not cut by them. A 64-wide layer 1 (grid_gpu's
# shape, a quarter of a torus, one thread): subdivision 45 s against 67 s; a 16-wide one (grid_cpu):
# as fast either way (4.8-6.6 s against 5.1-5.4 s on the bunny), so not there.
REGION_WIDTH = 32


@dataclass
class KuhnGrid:
    """The finest grid of a nested simplex-grid encoder over a box made of its cells (:func:`kuhn_grid`).

    Parameters
    ----------
    n : int
        The finest resolution: grid coordinates ``u = n (x - origin) / span``.
    origin, span : float
        The grid's lower bound and width (every axis).
    first, count : (D,) int64 Tensor
        The box's first cell and number of cells on every axis.
    box : (D, 2) float Tensor
        The box, in the extraction's dtype and on its device.
    plane_ids : (families, 2 n + 1) int64 Tensor
        ``plane_ids[f, k + n]``: the index, among the encoder's planes over the box
        (:func:`nsr.extraction.subdivide.encoder_facets`), of the plane of family ``f`` at grid offset
        ``k``; -1 where it does not meet the open box. Families: ``u_i = k`` for axis ``i < D``, then
        ``u_i - u_j = k`` for ``i < j`` in lexicographic order.
    start, kmin, size : (families,) int64 Tensor
        A family's planes have consecutive indices, from ``start[f]`` at offset ``kmin[f]``, ``size[f]``
        of them.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> from nsr.extraction.subdivide import encoder_facets
    >>> g = as_graph(GridMLP(in_dim=2, width=4, depth=1, n_levels=1, min_resolution=2, max_resolution=2))
    >>> g = g.to(dtype=torch.float64)
    >>> box = np.array([[-1.0, 1.0], [-1.0, 1.0]])
    >>> kg = kuhn_grid(g, box, encoder_facets(g, torch.tensor(box[:, 0]), torch.tensor(box[:, 1])))
    >>> kg.plane_ids.tolist()  # x = 0 and y = 0 (u = 1), x - y = -1, 0, 1 (u_0 - u_1 = -1, 0, 1): planes 0..4
    [[-1, -1, -1, 0, -1], [-1, -1, -1, 1, -1], [-1, 2, 3, 4, -1]]
    >>> kg.positions(torch.tensor([[0, 1], [2, 2]])).tolist()
    [[-1.0, 0.0], [1.0, 1.0]]
    """

    n: int
    origin: float
    span: float
    first: Tensor  # (D,) int64: the box's first cell on every axis
    count: Tensor  # (D,) int64: the box's cells on every axis
    box: Tensor  # (D, 2) float: the box
    plane_ids: Tensor  # (families, 2n + 1) int64
    start: Tensor  # (families,) int64
    kmin: Tensor  # (families,) int64
    size: Tensor  # (families,) int64

    @property
    def dim(self) -> int:
        """Input dimension ``D``."""
        return int(self.first.shape[0])

    def positions(self, v: Tensor) -> Tensor:
        """Points ``(..., D)`` of grid vertices ``v`` ``(..., D)`` int64 (the box's own coordinates on its faces).

        Parameters
        ----------
        v : (..., D) int64 Tensor
            Grid vertices of the finest level.

        Returns
        -------
        (..., D) float Tensor
            ``origin + span * v / n``, in the box's dtype.
        """
        x = self.origin + self.span * (v.to(self.box.dtype) / self.n)
        x = torch.where(v == self.first, self.box[:, 0], x)
        return torch.where(v == self.first + self.count, self.box[:, 1], x)


def _pair_family(i: int, j: int, d: int) -> int:
    """Family index of the planes ``u_i - u_j = k`` (``i < j``)."""
    return d + sum(d - 1 - a for a in range(i)) + (j - i - 1)


def kuhn_grid(graph: PLGraph, b: np.ndarray, facets: tuple[Tensor, Tensor, Tensor]) -> KuhnGrid | None:
    """The Kuhn grid whose simplices are the cells of ``graph``'s encoder over the box ``b``, or None.

    None unless the encoder is a simplex grid whose resolutions all divide the finest one, and the
    box ``(D, 2)`` is a union of cells of the finest level inside the grid's bounds (within
    ``1e-9`` of a cell).

    Parameters
    ----------
    graph : PLGraph
        The network.
    b : (D, 2) float ndarray
        The box.
    facets : tuple of Tensor
        The encoder's planes over the box (:func:`nsr.extraction.subdivide.encoder_facets`).

    Returns
    -------
    KuhnGrid or None

    Examples
    --------
    >>> import numpy as np, torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> from nsr.extraction.subdivide import encoder_facets
    >>> def grid(net, box):
    ...     g = as_graph(net).to(dtype=torch.float64)
    ...     bt = torch.tensor(box, dtype=torch.float64)
    ...     return kuhn_grid(g, np.array(box), encoder_facets(g, bt[:, 0], bt[:, 1]))
    >>> nested = GridMLP(in_dim=3, width=4, depth=1, n_levels=2, min_resolution=2, max_resolution=4)
    >>> kg = grid(nested, [[-1.0, 1.0], [-1.0, 0.0], [-0.5, 1.0]])
    >>> kg.n, kg.first.tolist(), kg.count.tolist()
    (4, [0, 0, 1], [4, 2, 3])
    >>> grid(nested, [[-1.0, 1.0], [-1.0, 0.1], [-1.0, 1.0]]) is None  # not on the grid
    True
    >>> overlaid = GridMLP(in_dim=3, width=4, depth=1, n_levels=2, min_resolution=2, max_resolution=3)
    >>> grid(overlaid, [[-1.0, 1.0]] * 3) is None
    True
    """
    enc = graph.encoder
    if not isinstance(enc, SimplexGridEncoder):
        return None
    res = enc.encoding.resolutions
    n = max(res)
    if any(n % r for r in res):
        return None
    d = graph.in_dim
    origin, span = float(enc.encoding.lo), float(enc.encoding.hi - enc.encoding.lo)
    k = (np.asarray(b, dtype=np.float64) - origin) * n / span
    kr = np.rint(k)
    if np.abs(k - kr).max() > 1e-9 * n or kr.min() < 0 or kr.max() > n or (kr[:, 1] <= kr[:, 0]).any():
        return None
    normals, offsets, _ = facets
    dev = offsets.device
    nrm = normals.detach().cpu().double()
    off = offsets.detach().cpu().double()
    n_fam = d + d * (d - 1) // 2
    plus, minus = nrm == 1, nrm == -1
    i_of = plus.double().argmax(1)
    j_of = minus.double().argmax(1)
    axis = ~minus.any(1)
    fam = torch.tensor([int(i) if a else _pair_family(int(i), int(j), d)
                        for i, j, a in zip(i_of.tolist(), j_of.tolist(), axis.tolist())], dtype=torch.int64)
    kf = torch.where(axis, off - origin, off) * n / span
    kk = kf.round()
    if len(off) and float((kf - kk).abs().max()) > 1e-3:  # whole numbers (float32 offsets are rounded)
        return None
    kk = kk.long()
    if len(off) and (kk.abs().max() > n):
        return None
    plane_ids = torch.full((n_fam, 2 * n + 1), -1, dtype=torch.int64)
    plane_ids[fam, kk + n] = torch.arange(len(off))
    start = torch.zeros(n_fam, dtype=torch.int64)
    kmin = torch.zeros(n_fam, dtype=torch.int64)
    size = torch.bincount(fam, minlength=n_fam)
    for f in range(n_fam):
        ids = torch.nonzero(fam == f).squeeze(1)
        if len(ids):
            start[f], kmin[f] = ids.min(), kk[ids].min()
            if not bool((ids == start[f] + kk[ids] - kmin[f]).all()):  # not in order of offset: not ours
                return None
    first = torch.as_tensor(kr[:, 0], dtype=torch.int64)
    return KuhnGrid(n, origin, span, first.to(dev), torch.as_tensor(kr[:, 1] - kr[:, 0], dtype=torch.int64).to(dev),
                    torch.as_tensor(b, dtype=offsets.dtype, device=dev), plane_ids.to(dev), start.to(dev),
                    kmin.to(dev), size.to(dev))


@dataclass
class _SimplexTables:
    steps: Tensor  # (S, D+1, D) int64: corner m of simplex s is c + steps[s, m]
    family: Tensor  # (S, D+1) int64: family of facet j
    coef: Tensor  # (S, D+1, D) int64: its offset k = coef . c + const
    const: Tensor  # (S, D+1) int64
    inside: Tensor  # (S, D+1) bool: the simplex lies on the facet's positive side


def simplex_tables(d: int, device: torch.device | None = None) -> _SimplexTables:
    """Corners and facets of the ``D!`` Kuhn simplices of a cube (see the module docstring).

    Parameters
    ----------
    d : int
        Dimension.
    device : torch.device, optional

    Returns
    -------
    _SimplexTables

    Examples
    --------
    In 2-D, the triangle below the diagonal (``sigma = (0, 1)``: ``1 >= f_0 >= f_1 >= 0``) has corners
    ``(0, 0)``, ``(1, 0)``, ``(1, 1)`` and facets ``u_0 = c_0 + 1`` (inside: negative),
    ``u_0 - u_1 = c_0 - c_1`` (positive) and ``u_1 = c_1`` (positive):

    >>> t = simplex_tables(2)
    >>> t.steps[0].tolist(), t.family[0].tolist(), t.const[0].tolist(), t.inside[0].tolist()
    ([[0, 0], [1, 0], [1, 1]], [0, 2, 1], [1, 0, 0], [False, True, True])
    """
    perms = list(itertools.permutations(range(d)))
    s = len(perms)
    steps = torch.zeros(s, d + 1, d, dtype=torch.int64)
    family = torch.zeros(s, d + 1, dtype=torch.int64)
    coef = torch.zeros(s, d + 1, d, dtype=torch.int64)
    const = torch.zeros(s, d + 1, dtype=torch.int64)
    inside = torch.zeros(s, d + 1, dtype=torch.bool)
    for t, p in enumerate(perms):
        for m in range(1, d + 1):
            steps[t, m] = steps[t, m - 1]
            steps[t, m, p[m - 1]] += 1
        family[t, 0], coef[t, 0, p[0]], const[t, 0] = p[0], 1, 1  # f[p0] = 1: u = c + 1, inside below
        for j in range(1, d):  # f[p[j-1]] = f[p[j]]: u_a - u_b = c_a - c_b, inside where f[p[j-1]] >= f[p[j]]
            a, b = min(p[j - 1], p[j]), max(p[j - 1], p[j])
            family[t, j], coef[t, j, a], coef[t, j, b] = _pair_family(a, b, d), 1, -1
            inside[t, j] = p[j - 1] < p[j]
        family[t, d], coef[t, d, p[d - 1]], inside[t, d] = p[d - 1], 1, True  # f[p[D-1]] = 0: u = c
    return _SimplexTables(*(x.to(device) for x in (steps, family, coef, const, inside)))


_BELOW = torch.tensor([((1 << k) - 1) - (1 << 64 if k == 64 else 0) for k in range(65)], dtype=torch.int64)


def range_bits(start: Tensor, count: Tensor, n_words_: int) -> Tensor:
    """Packed bit sets ``(M, W)`` holding ids ``start .. start + count - 1`` (``(M,)`` each).

    Parameters
    ----------
    start, count : (M,) int64 Tensor
        First id and number of ids of every set (``count >= 0``).
    n_words_ : int
        Words ``W``.

    Returns
    -------
    (M, W) int64 Tensor
        As :func:`nsr.extraction.bits.pack_bits` packs them.

    Examples
    --------
    >>> import torch
    >>> from nsr.extraction.bits import unpack_bits
    >>> sets = range_bits(torch.tensor([3, 60, 0]), torch.tensor([2, 70, 0]), 3)
    >>> [torch.nonzero(row).squeeze(1).tolist()[:4] for row in unpack_bits(sets, torch.arange(192))]
    [[3, 4], [60, 61, 62, 63], []]
    >>> int(unpack_bits(sets, torch.arange(192))[1].sum())
    70
    """
    below = _BELOW.to(start.device)
    w = torch.arange(n_words_, device=start.device) * 64
    lo = (start[:, None] - w).clamp(0, 64)
    hi = (start[:, None] + count[:, None] - w).clamp(0, 64)
    return below[hi] & ~below[lo]


def _facet_ids(kg: KuhnGrid, cells: Tensor, perm: Tensor, t: _SimplexTables, first_id: int) -> Tensor:
    """Constraint ids ``(M, D+1)`` of the facets of simplices ``perm`` of ``cells``: box facets ``2 a``
    (``x_a = lo``) and ``2 a + 1`` (``x_a = hi``) on the box's faces, ``first_id + plane`` elsewhere."""
    d = kg.dim
    k = (t.coef[perm] * cells[:, None, :]).sum(-1) + t.const[perm]  # (M, D+1)
    fam = t.family[perm]
    axis = fam.clamp(max=d - 1)
    is_axis = fam < d
    on_lo = is_axis & (k == kg.first[axis])
    on_hi = is_axis & (k == kg.first[axis] + kg.count[axis])
    pid = kg.plane_ids[fam, (k + kg.n).clamp(0, 2 * kg.n)]
    if not bool(((pid >= 0) | on_lo | on_hi).all()):
        raise RuntimeError("a simplex facet is neither a plane of the encoder nor a facet of the box")
    return torch.where(on_lo, 2 * axis, torch.where(on_hi, 2 * axis + 1, first_id + pid))


def simplex_sides(kg: KuhnGrid, cells: Tensor, perm: Tensor, layout: ConstraintLayout,
                  tables: _SimplexTables | None = None) -> tuple[Tensor, Tensor]:
    """The facets of simplices ``perm`` ``(M,)`` of cubes ``cells`` ``(M, D)`` and their sides of every plane.

    Parameters
    ----------
    kg : KuhnGrid
        The grid.
    cells : (M, D) int64 Tensor
        Cube of every simplex (finest-level grid indices).
    perm : (M,) int64 Tensor
        Which of the cube's ``D!`` simplices.
    layout : ConstraintLayout
        The network's constraint ids.
    tables : _SimplexTables, optional
        :func:`simplex_tables` of ``D``, if already made.

    Returns
    -------
    cid : (M, D+1) int64 Tensor
        Constraint id of facet ``j`` (opposite corner ``j``): a box facet on the box's faces, else
        ``layout.facet(plane)``.
    bits : (M, W) int64 Tensor
        Each simplex's sign bits in ``layout``: set on the box facets and on every encoder plane it
        lies on the positive side of (from its centroid, which no plane passes through).

    Examples
    --------
    The triangle below the diagonal of the cell ``[0, 1]^2`` of a resolution-2 grid on ``[-1, 1]^2``
    (centroid ``(2/3, 1/3)``) has facets ``x = 1`` (box facet 1), ``x - y = 0`` (plane 3) and ``y = 0``
    (plane 1); it lies on the positive side of the box facets (bits 0-3) and of planes 0-3 (``x = 0``,
    ``y = 0``, ``x - y = -1``, ``x - y = 0``: bits 4-7), not of plane 4 (``x - y = 1``, bit 8):

    >>> import numpy as np, torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> from nsr.extraction.subdivide import encoder_facets
    >>> g = as_graph(GridMLP(in_dim=2, width=4, depth=1, n_levels=1, min_resolution=2, max_resolution=2))
    >>> g = g.to(dtype=torch.float64)
    >>> box = np.array([[-1.0, 1.0]] * 2)
    >>> facets = encoder_facets(g, torch.tensor(box[:, 0]), torch.tensor(box[:, 1]))
    >>> layout = ConstraintLayout(2, g.widths, len(facets[1]))
    >>> cid, bits = simplex_sides(kuhn_grid(g, box, facets), torch.tensor([[1, 1]]), torch.tensor([0]), layout)
    >>> cid.tolist(), [layout.facet(k) for k in (1, 3)], bin(int(bits[0, 0]))
    ([[1, 7, 5]], [5, 7], '0b11111111')
    """
    d = kg.dim
    dev = cells.device
    t = tables if tables is not None else simplex_tables(d, dev)
    m = cells.shape[0]
    n_w = n_words(layout.n_constraints)
    cid = _facet_ids(kg, cells, perm, t, layout.facet(0))
    # sides: of every encoder plane, from the centroid (never on a plane): the planes of a family below
    # it, a prefix of the family's ids; the box facets all positive
    total = (cells[:, None, :] + t.steps[perm]).sum(1)  # (M, D) = (D + 1) x centroid
    bits = range_bits(torch.zeros(m, dtype=torch.int64, device=dev), torch.full((m,), 2 * d, device=dev), n_w)
    for f in range(kg.plane_ids.shape[0]):
        if f < d:
            val = total[:, f]
        else:
            a, b = next((a, b) for a in range(d) for b in range(a + 1, d) if _pair_family(a, b, d) == f)
            val = total[:, a] - total[:, b]
        below = torch.div(val, d + 1, rounding_mode="floor") - kg.kmin[f] + 1
        bits |= range_bits(layout.facet(0) + kg.start[f].expand(m), below.clamp(0, int(kg.size[f])), n_w)
    return cid, bits


def local_layout(layout: ConstraintLayout) -> ConstraintLayout:
    """``layout`` with the ``D + 1`` facets of one simplex in place of the encoder's planes: the ids a
    simplex tile's skeleton is cut in (:func:`simplex_skeleton`'s ``local``), so that its vertices carry
    a bit per facet of their own simplex rather than one per plane of the encoder (the bunny's grid:
    2 words instead of 15).

    Parameters
    ----------
    layout : ConstraintLayout
        The network's.

    Returns
    -------
    ConstraintLayout

    Examples
    --------
    >>> from nsr.pl.layout import ConstraintLayout
    >>> lay = ConstraintLayout(3, (32, 32), 858)
    >>> local_layout(lay).neuron_offset, local_layout(lay).n_constraints, lay.n_constraints
    (10, 75, 929)
    """
    return ConstraintLayout(layout.dim, layout.widths, layout.dim + 1)


def globalize(vzeros: Tensor, vpos: Tensor, vtile: Tensor, ezeros: Tensor, etile: Tensor, sides: tuple[Tensor, Tensor],
              local: ConstraintLayout, layout: ConstraintLayout, word0: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Zeros and signs numbered by :func:`local_layout` back in the network's ``layout``.

    A simplex's own facet ``j`` becomes its plane ``cid[tile, j]`` (box facets keep their ids), neurons and
    the output move by the difference of the offsets, and a vertex's sign on every plane of the encoder is
    its simplex's (``bits``) except on the planes it lies on: as :func:`simplex_skeleton` without ``local``
    and the same cuts would have named it.

    Parameters
    ----------
    vzeros : (V, D) int Tensor
    vpos : (V, W_local) int64 Tensor
    vtile : (V,) int Tensor
        Vertices: zeros, signs and simplex (a row of ``sides``).
    ezeros : (E, D-1) int Tensor
    etile : (E,) int Tensor
        Edges: zeros and simplex.
    sides : (cid, bits)
        :func:`simplex_sides` of the simplices in ``layout``.
    local, layout : ConstraintLayout
    word0 : int
        Return the sign words from this one on only (3-D meshes read the neurons' words alone:
        ``layout.neuron_offset // 64``).

    Returns
    -------
    vzeros : (V, D) int32 Tensor
    vpos : (V, W - word0) int64 Tensor
    ezeros : (E, D-1) int32 Tensor
        In ``layout``, zeros sorted.

    Examples
    --------
    The corners of a cube's 6 tetrahedra, numbered locally and mapped back, are those numbered globally:

    >>> import numpy as np, torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> from nsr.extraction.subdivide import encoder_facets
    >>> g = as_graph(GridMLP(in_dim=3, width=4, depth=1, n_levels=1, min_resolution=2, max_resolution=2))
    >>> g = g.to(dtype=torch.float64)
    >>> box = np.array([[-1.0, 1.0]] * 3)
    >>> facets = encoder_facets(g, torch.tensor(box[:, 0]), torch.tensor(box[:, 1]))
    >>> kg, layout = kuhn_grid(g, box, facets), ConstraintLayout(3, g.widths, len(facets[1]))
    >>> cells, perm = torch.tensor([[0, 1, 0]]).expand(6, 3), torch.arange(6)
    >>> sides = simplex_sides(kg, cells, perm, layout)
    >>> ref = simplex_skeleton(kg, cells, perm, layout)
    >>> sk = simplex_skeleton(kg, cells, perm, layout, local=local_layout(layout), sides=sides)
    >>> sk.vpos.t.shape[1], ref.vpos.t.shape[1]
    (1, 1)
    >>> vz, vp, ez = globalize(sk.vzeros.t, sk.vpos.t, sk.vtile.t, sk.ezeros.t, sk.vtile.t[sk.edges.t[:, 0].long()],
    ...                        sides, local_layout(layout), layout)
    >>> torch.equal(vz, ref.vzeros.t), torch.equal(vp, ref.vpos.t), torch.equal(ez, ref.ezeros.t)
    (True, True, True)
    """
    from nsr.extraction.bits import unpack_bits

    cid, bits = sides
    d = layout.dim
    shift = layout.neuron_offset - local.neuron_offset

    def ids(z: Tensor, tile: Tensor) -> Tensor:
        z = z.long()
        own = (z >= local.facet(0)) & (z < local.neuron_offset)
        j = (z - local.facet(0)).clamp(0, d)
        g = torch.where(own, cid[tile.long()[:, None].expand_as(z), j], z)
        return torch.where(z >= local.neuron_offset, z + shift, g).sort(1).values

    gz = ids(vzeros, vtile)
    ez = ids(ezeros, etile).int()
    n_w = bits.shape[1]
    out = torch.empty(len(gz), n_w - word0, dtype=torch.int64, device=bits.device)
    later = torch.arange(local.neuron_offset, local.n_constraints, device=bits.device)
    word, mask = bit_values(later + shift)
    words = torch.unique(word).tolist()
    for sl in _chunks(len(gz), 8 * n_w + len(later) + 16 * d, bits.device):
        z = gz[sl]
        w0, m0 = bit_values(z)
        cleared = torch.zeros(len(z), n_w, dtype=torch.int64, device=bits.device)
        cleared.scatter_add_(1, w0, torch.where(z < layout.neuron_offset, m0, 0))  # distinct ids: the sum is the union
        row = bits[:, word0:].index_select(0, vtile[sl].long()) & ~cleared[:, word0:]
        flags = unpack_bits(vpos[sl], later)  # (n, neurons + 1)
        for w in words:
            sel = word == w
            row[:, w - word0] |= (flags[:, sel].long() * mask[sel]).sum(1)  # distinct bits: sum = or
        out[sl] = row
    return gz.int(), out, ez


def simplex_skeleton(kg: KuhnGrid, cells: Tensor, perm: Tensor, layout: ConstraintLayout,
                     tables: _SimplexTables | None = None, local: ConstraintLayout | None = None,
                     sides: tuple[Tensor, Tensor] | None = None) -> _Skeleton:
    """The skeletons of simplices ``perm`` ``(M,)`` of cubes ``cells`` ``(M, D)``, each its own tile.

    Tile ``t`` has corners ``t (D+1) .. t (D+1) + D`` and ``D (D+1) / 2`` edges; a corner's zeros are
    the ids of the facets through it (encoder planes, or box facets on the box's faces), its signs
    on every other plane the simplex's. ``tile_bits`` holds each simplex's sides, ``walls`` the
    first neuron id.

    Parameters
    ----------
    kg : KuhnGrid
        The grid.
    cells : (M, D) int64 Tensor
        Cube of every simplex (its lowest corner, finest-level grid indices).
    perm : (M,) int64 Tensor
        Which of the cube's ``D!`` simplices (an index of :func:`simplex_tables`).
    layout : ConstraintLayout
        The network's constraint ids (encoder planes first).
    tables : _SimplexTables, optional
        :func:`simplex_tables` of ``D``, if already made.
    local : ConstraintLayout, optional
        Number the skeleton by this layout of ``D + 1`` facets instead (:func:`local_layout`): every
        simplex's facets off the box are ids ``local.facet(j)`` and its signs are on its own facets only,
        so a vertex carries a few words instead of one bit per encoder plane; :func:`globalize` maps
        the result back. ``sk.tile_bits`` is then in the local ids.
    sides : (cid, bits), optional
        :func:`simplex_sides` of these simplices, if already computed.

    Returns
    -------
    _Skeleton

    Examples
    --------
    The 6 tetrahedra of one cube share its corners, but each has its own 4 vertices and 6 edges:

    >>> import numpy as np, torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> from nsr.pl.layout import ConstraintLayout
    >>> from nsr.extraction.subdivide import encoder_facets
    >>> g = as_graph(GridMLP(in_dim=3, width=4, depth=1, n_levels=1, min_resolution=2, max_resolution=2))
    >>> g = g.to(dtype=torch.float64)
    >>> box = np.array([[-1.0, 1.0]] * 3)
    >>> facets = encoder_facets(g, torch.tensor(box[:, 0]), torch.tensor(box[:, 1]))
    >>> kg = kuhn_grid(g, box, facets)
    >>> layout = ConstraintLayout(3, g.widths, len(facets[1]))
    >>> sk = simplex_skeleton(kg, torch.tensor([[0, 1, 0]]).expand(6, 3), torch.arange(6), layout)
    >>> sk.n_vertices, sk.n_edges, sk.x.t[:4].tolist()
    (24, 36, [[-1.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 1.0, -1.0], [0.0, 1.0, 0.0]])
    >>> sk.vzeros.t[0].tolist()  # (-1, 0, -1) on its facets z = -1 (box), x - y = -1, y - z = 1 (planes 3, 11)
    [4, 9, 17]
    """
    d = kg.dim
    dev = cells.device
    t = tables if tables is not None else simplex_tables(d, dev)
    m = cells.shape[0]
    corners = cells[:, None, :] + t.steps[perm]  # (M, D+1, D)
    cid, bits = sides if sides is not None else simplex_sides(kg, cells, perm, layout, t)
    n_w = bits.shape[1]
    if local is not None:  # the simplex's own facets as ids local.facet(j): its sides on them only
        own = local.facet(0) + torch.arange(d + 1, device=dev)
        word, mask = bit_values(cid.clamp(min=0))
        inside = ((bits.gather(1, word) & mask) != 0) & (cid >= 2 * d)  # (M, D+1)
        cid = torch.where(cid < 2 * d, cid, own)
        layout, n_w = local, n_words(local.n_constraints)
        bits = range_bits(torch.zeros(m, dtype=torch.int64, device=dev), torch.full((m,), 2 * d, device=dev), n_w)
        w_own, m_own = bit_values(own)
        bits = bits.index_put((torch.arange(m, device=dev)[:, None].expand(m, d + 1), w_own.expand(m, d + 1)),
                              torch.where(inside, m_own, 0), accumulate=True)  # distinct bits: sum = or
    # corners: on every facet but the opposite one
    others = torch.tensor([[j for j in range(d + 1) if j != i] for i in range(d + 1)], device=dev)  # (D+1, D)
    vz = cid[:, others].sort(-1).values  # (M, D+1, D)
    vpos = bits[:, None, :].expand(m, d + 1, n_w).clone()
    word, mask = bit_values(vz)
    cleared = torch.zeros_like(vpos).scatter_add_(2, word, mask)  # distinct ids: the sum is the union
    vpos &= ~cleared
    pairs = torch.tensor(list(itertools.combinations(range(d + 1), 2)), device=dev)  # (E_s, 2)
    rest = torch.tensor([[j for j in range(d + 1) if j not in p] for p in pairs.tolist()], device=dev)
    ez = cid[:, rest].sort(-1).values if d > 1 else cid.new_zeros(m, len(pairs), 0)  # (M, E_s, D-1)
    base = (torch.arange(m, device=dev) * (d + 1))[:, None, None]
    edges = (pairs[None] + base).reshape(-1, 2)
    x = kg.positions(corners).reshape(-1, d)
    return _Skeleton(
        x=_Buffer(x),
        vzeros=_Buffer(vz.reshape(-1, d).int()),
        vpos=_Buffer(vpos.reshape(-1, n_w)),
        vtile=_Buffer(torch.arange(m, device=dev).repeat_interleave(d + 1).int()),
        edges=_Buffer(edges.int()),
        ezeros=_Buffer(ez.reshape(-1, d - 1).int()),
        dim=d,
        walls=layout.neuron_offset,
        tile_bits=bits,
        key_word0=layout.neuron_offset // 64,
    )


def _output_interval(graph: PLGraph, z0_lo: Tensor, z0_hi: Tensor, sources: dict[int, tuple[Tensor, Tensor]]
                     ) -> tuple[Tensor, Tensor]:
    """Interval bounds ``(M,)`` of the output from layer 0's range ``(M, n_0)`` and the other sources'."""
    pre = interval_bounds(graph, None, None, known=[(z0_lo, z0_hi)], sources=sources)
    return pre[-1][0][:, 0], pre[-1][1][:, 0]


def _simplices_reaching(graph: PLGraph, z0: Tensor, front: list[Tensor], level: float, tol: float) -> Tensor:
    """Which simplices the output may reach ``level`` on: ``(M,)`` bool, from layer 0's values ``(M, D+1, n_0)``
    and the frontier sources' (:func:`nsr.pl.bounds.frontier`, ``(M, D+1, n_k)`` each) at their corners.

    Everything is affine on a simplex, so ranges are exact at the corners: interval bounds, then linear
    bounds (CROWN), whose minimum over the simplex is at a corner too, as
    :func:`nsr.extraction.pruning._prune_regions_bounded` bounds a region."""
    width = z0.shape[2]
    u = torch.cat([z0, *front], 2) if front else z0
    keep_all = torch.zeros(len(u), dtype=torch.bool, device=u.device)
    for sl in _chunks(len(u), u.shape[1] * u.shape[2] * u.element_size() * 8, u.device):
        block = u[sl]
        lo, hi = block.amin(1), block.amax(1)
        bounds = torch.tensor([width] + [f.shape[2] for f in front], device=u.device).cumsum(0).tolist()
        sources = {k: (lo[:, a:b], hi[:, a:b]) for k, a, b in zip(frontier(graph, 0), bounds[:-1], bounds[1:])}
        _, keep, (a_lo, c_lo, a_up, c_up) = region_bounds(graph, 0, (lo[:, :width], hi[:, :width]), sources,
                                                          keep=lambda olo, ohi: may_reach(olo, ohi, level, tol))
        if bool(keep.any()):
            cand = block[keep]
            fmin = torch.bmm(cand, a_lo[:, :, None]).amin(1)[:, 0] + c_lo
            fmax = torch.bmm(cand, a_up[:, :, None]).amax(1)[:, 0] + c_up
            keep[keep.clone()] = may_reach(fmin, fmax, level, tol)
        keep_all[sl] = keep
    return keep_all


def _live_slabs(graph: PLGraph, kg: KuhnGrid, level: float, tol: float, slab: int, close: bool) -> list[bool]:
    """Which slabs may hold the level (or, with ``close``, caps), from bounds over tiles of ``slab`` by
    ``4 slab`` cells across each (:func:`nsr.pl.bounds.output_bounds`, through the encoder's feature
    ranges): evaluating a 256^3 grid's points costs minutes, bounding a few thousand boxes seconds."""
    d, dev = kg.dim, kg.box.device
    c_all = kg.count.tolist()
    starts = [list(range(0, c_all[0], slab))] + [list(range(0, c, 4 * slab)) for c in c_all[1:]]
    steps = [slab] + [4 * slab] * (d - 1)
    idx = torch.cartesian_prod(*[torch.tensor(s_, device=dev) for s_ in starts]).reshape(-1, d)
    lo = idx + kg.first
    hi = torch.minimum(lo + torch.tensor(steps, device=dev), kg.first + kg.count)
    keep = torch.zeros(len(lo), dtype=torch.bool, device=dev)
    for part in torch.arange(len(lo), device=dev).split(4096):
        olo, ohi = output_bounds(graph, kg.positions(lo[part]), kg.positions(hi[part]))
        keep[part] = may_reach(olo, ohi, level, tol)
        if close:
            on_box = ((lo[part] == kg.first) | (hi[part] == kg.first + kg.count)).any(1)
            keep[part] |= on_box & (olo < level + tol)
    return keep.view(len(starts[0]), -1).any(1).tolist()


def _block_extremes(values: Tensor, step: list[int]) -> tuple[Tensor, Tensor]:
    """Min and max over the grid points of every block of ``step`` cells (the last block of an axis may be
    shorter): ``(B_0, .., B_{D-1}, C)`` each, from point values ``(P_0, .., P_{D-1}, C)``.

    One axis at a time (windows of ``step + 1`` points, ``step`` apart; an axis is first padded with its
    last points, which changes no extreme): ~4 reads per value instead of a pooling window's ``(step + 1)^D``.

    Examples
    --------
    >>> import torch
    >>> v = torch.arange(5.0)[:, None, None] * torch.ones(1, 2, 1)  # 5 x 2 points, 1 channel
    >>> [t.flatten().tolist() for t in _block_extremes(v, [3, 1])]  # blocks of points 0-3 and 3-4 along axis 0
    [[0.0, 3.0], [3.0, 4.0]]
    """
    lo, hi = values, values
    for axis, s in enumerate(step):
        n = values.shape[axis] - 1  # cells along the axis
        nb = -(-n // s)
        pad = nb * s - n
        if pad:
            last = [slice(None)] * values.ndim
            last[axis] = slice(n, n + 1)
            reps = [1] * values.ndim
            reps[axis] = pad
            lo = torch.cat([lo, lo[tuple(last)].repeat(reps)], axis)
            hi = torch.cat([hi, hi[tuple(last)].repeat(reps)], axis)
        lo = lo.unfold(axis, s + 1, s).amin(-1)
        hi = hi.unfold(axis, s + 1, s).amax(-1)
    return lo, hi


def candidate_simplices(graph: PLGraph, kg: KuhnGrid, level: float, tol: float, slab: int = 4, close: bool = False
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict[str, int]]:
    """The simplices the output may cross: ``(cells, perm, z0, feat_lo, feat_hi, stats)``.

    The grid's vertices are evaluated slab by slab (``slab`` cubes thick along axis 0); layer 0
    is affine on every simplex, so its exact range is its range at the corners, and over a cube or a
    block of cubes its values lie in the hull of those at the grid points. Interval arithmetic bounds
    the output over blocks of ``slab^D`` cubes, then over the cubes of the blocks kept, linear bounds
    (minimum at a corner) over the cubes left, and both over every simplex of the cubes kept.

    Parameters
    ----------
    graph : PLGraph
        The network (its encoder nests on ``kg``).
    kg : KuhnGrid
        The grid.
    level, tol : float
        The level of ``g`` and the output's sign tolerance.
    slab : int
        Cubes per slab along axis 0.
    close : bool
        Also keep the simplices with a facet on the box where the output may be below the level (the caps).

    Returns
    -------
    cells : (M, D) int64 Tensor
    perm : (M,) int64 Tensor
        The simplices kept.
    z0 : (M, D+1, n_0) float Tensor
        Layer 0's pre-activations at their corners.
    feat_lo, feat_hi : (M, F) float Tensor
        The range of the encoder's features over each.
    stats : dict
        ``kuhn_cubes``, ``kuhn_cubes_kept``, ``kuhn_simplices_kept``.

    Examples
    --------
    A grid of resolution 2 holds 8 cubes and 48 tetrahedra; an octahedron-like level set passes through
    some of them only:

    >>> import numpy as np, torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> from nsr.extraction.subdivide import encoder_facets
    >>> _ = torch.manual_seed(0)
    >>> net = GridMLP(in_dim=3, width=4, depth=1, n_levels=1, min_resolution=2, max_resolution=2, init_scale=1.0)
    >>> g = as_graph(net).to(dtype=torch.float64)
    >>> box = np.array([[-1.0, 1.0]] * 3)
    >>> kg = kuhn_grid(g, box, encoder_facets(g, torch.tensor(box[:, 0]), torch.tensor(box[:, 1])))
    >>> level = float(g(torch.zeros(1, 3, dtype=torch.float64)))
    >>> cells, perm, z0, _, _, stats = candidate_simplices(g, kg, level, 1e-12)
    >>> stats["kuhn_cubes"], 0 < stats["kuhn_simplices_kept"] <= 48, tuple(z0.shape[1:])
    (8, True, (4, 4))
    """
    stats: dict[str, int] = {}
    parts = list(_candidate_slabs(graph, kg, level, tol, stats, slab, close))
    d, dev, dt = kg.dim, kg.box.device, kg.box.dtype
    n_f = graph.encoder.out_dim if graph.encoder is not None else 0
    empty = (torch.zeros(0, d, dtype=torch.int64, device=dev), torch.zeros(0, dtype=torch.int64, device=dev),
             torch.zeros(0, d + 1, graph.layers[0].n, dtype=dt, device=dev),
             torch.zeros(0, n_f, dtype=dt, device=dev), torch.zeros(0, n_f, dtype=dt, device=dev))
    cells, perm, z0, flo, fhi = (torch.cat(c) for c in zip(*parts)) if parts else empty
    return cells, perm, z0, flo, fhi, stats


def _candidate_slabs(graph: PLGraph, kg: KuhnGrid, level: float, tol: float, stats: dict[str, int], slab: int,
                     close: bool = False) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """:func:`candidate_simplices` slab by slab (every slab, kept or not), the counts into ``stats``."""
    d = kg.dim
    dev = kg.box.device
    t = simplex_tables(d, dev)
    first, count = kg.first, kg.count
    front = frontier(graph, 0)
    offsets = torch.cartesian_prod(*[torch.arange(2, device=dev)] * d).reshape(-1, d)  # a cube's corners
    c_all = count.tolist()
    stats.update(kuhn_cubes=int(np.prod(c_all)), kuhn_cubes_kept=0, kuhn_simplices_kept=0, kuhn_slabs_skipped=0)
    live = _live_slabs(graph, kg, level, tol, slab, close)
    for s_i, i0 in enumerate(range(0, c_all[0], slab)):
        i1 = min(i0 + slab, c_all[0])
        if not live[s_i]:  # no tile across this slab may reach the level: nothing to evaluate
            stats["kuhn_slabs_skipped"] += 1
            yield (torch.zeros(0, d, dtype=torch.int64, device=dev), torch.zeros(0, dtype=torch.int64, device=dev),
                   torch.zeros(0, d + 1, graph.layers[0].n, dtype=kg.box.dtype, device=dev),
                   *(torch.zeros(0, graph.encoder.out_dim, dtype=kg.box.dtype, device=dev),) * 2)
            continue
        shape = [i1 - i0 + 1] + [c + 1 for c in c_all[1:]]
        ranges_ = [torch.arange(i0, i1 + 1, device=dev)] + [torch.arange(c + 1, device=dev) for c in c_all[1:]]
        v = torch.cartesian_prod(*ranges_).reshape(-1, d) + first
        x = kg.positions(v)
        values = graph.input_values(x)
        z0 = graph.preactivations(x, 0, values=values)
        feats = values.get(ENCODED, x.new_zeros(len(x), 0))
        grid_z = z0.view(*shape, -1)
        g_f = feats.view(*shape, -1)
        cube = torch.cartesian_prod(*[torch.arange(s - 1, device=dev) for s in shape]).reshape(-1, d)
        shift = first + torch.tensor([i0] + [0] * (d - 1), device=dev)
        # Blocks of slab^D cubes first (the slab's thickness along axis 0): over a block, too, layer 0 and the
        # sources lie in the hull of their values at its grid points, and most blocks are far from the level.
        cand = torch.arange(len(cube), device=dev)
        if d in (2, 3):
            step = [i1 - i0] + [min(slab, c) for c in c_all[1:]]
            blo_z, bhi_z = _block_extremes(grid_z, step)
            bcell = torch.cartesian_prod(*[torch.arange(n, device=dev) for n in blo_z.shape[:-1]]).reshape(-1, d)
            b_lo = bcell * torch.tensor(step, device=dev) + shift
            b_hi = torch.minimum(b_lo + torch.tensor(step, device=dev), first + count)
            b_sources: dict[int, tuple[Tensor, Tensor]] = {}
            if INPUT in front:
                b_sources[INPUT] = (kg.positions(b_lo), kg.positions(b_hi))
            if ENCODED in front:
                flo_b, fhi_b = _block_extremes(g_f, step)
                b_sources[ENCODED] = (flo_b.reshape(len(bcell), -1), fhi_b.reshape(len(bcell), -1))
            olo, ohi = _output_interval(graph, blo_z.reshape(len(bcell), -1), bhi_z.reshape(len(bcell), -1),
                                        b_sources)
            b_keep = may_reach(olo, ohi, level, tol)
            if close:
                b_keep |= ((b_lo == first) | (b_hi == first + count)).any(1) & (ohi < level + tol)
            b_keep = b_keep.view(blo_z.shape[:-1])
            cand = torch.nonzero(b_keep[tuple((cube // torch.tensor(step, device=dev)).T)]).squeeze(1)
        strides = torch.tensor([int(np.prod(shape[a + 1:])) for a in range(d)], device=dev)
        olo = torch.full((len(cube),), float("inf"), dtype=z0.dtype, device=dev)
        ohi = torch.full((len(cube),), float("inf"), dtype=z0.dtype, device=dev)
        for part in cand.split(2**15):  # the cubes left: extremes over their corners, gathered (blocks kept few)
            flat = ((cube[part][:, None, :] + offsets) * strides).sum(-1)  # (k, 2^D)
            zc = z0[flat]
            sources: dict[int, tuple[Tensor, Tensor]] = {}
            if INPUT in front:
                sources[INPUT] = (kg.positions(cube[part] + shift), kg.positions(cube[part] + shift + 1))
            if ENCODED in front:
                fc = feats[flat]
                sources[ENCODED] = (fc.amin(1), fc.amax(1))
            olo[part], ohi[part] = _output_interval(graph, zc.amin(1), zc.amax(1), sources)
        reach = may_reach(olo, ohi, level, tol)
        # Linear bounds on the cubes left: over a cube, layer 0 and the sources lie in the hull of their values
        # at its corners (each simplex's do), so the corners' ranges bound them and a linear bound's minimum
        # over the cube is at a corner, as on a simplex. (Grids with wide first layers keep ~10% of their cubes
        # by intervals alone.)
        cand = torch.nonzero(reach).squeeze(1)
        for part in cand.split(2**14):
            flat = ((cube[part][:, None, :] + offsets) * strides).sum(-1)  # (k, 2^D)
            reach[part] = _simplices_reaching(graph, z0[flat], [x[flat] if k == INPUT else feats[flat] for k in front],
                                              level, tol)
        if close:  # the cubes on the box's faces where the output may be below the level hold caps
            cell = cube + shift
            reach |= ((cell == first) | (cell == first + count - 1)).any(1) & (ohi < level + tol)
        kept = torch.nonzero(reach).squeeze(1)
        stats["kuhn_cubes_kept"] += len(kept)
        # the simplices of the kept cubes: their corners' point indices in the slab
        n_s = t.steps.shape[0]
        cells_k = cube[kept].repeat_interleave(n_s, 0)
        perm = torch.arange(n_s, device=dev).repeat(len(kept))
        flat = ((cells_k[:, None, :] + t.steps[perm]) * strides).sum(-1)  # (M, D+1) slab-relative corners
        zc = z0[flat]  # (M, D+1, n_0)
        fc = feats[flat]
        keep = _simplices_reaching(graph, zc, [x[flat] if k == INPUT else fc for k in front], level, tol)
        if close:  # every simplex on the box's faces in a cube kept: those below the level hold caps
            keep |= (_facet_ids(kg, cells_k + shift, perm, t, 2 * d) < 2 * d).any(1)
        stats["kuhn_simplices_kept"] += int(keep.sum())
        yield cells_k[keep] + shift, perm[keep], zc[keep], fc[keep].amin(1), fc[keep].amax(1)


def subdivide_simplices(net: PLGraph, kg: KuhnGrid, level: float, tolerances: list[Tensor],
                        facets: tuple[Tensor, Tensor, Tensor], progress: bool, memory_limit: float | None,
                        batch: int | None = None, close: bool = False) -> tuple[_Arrays, int, int, dict[str, Any]]:
    """Surface mode's subdivision on the simplices of ``kg`` that the output may cross (with ``close``,
    also those on the box's faces where it is below the level: the caps).

    The simplices :func:`candidate_simplices` keeps stream in, slab by slab, into batches of ``batch``,
    each built (:func:`simplex_skeleton`), cut by the neurons and the level set
    (:func:`nsr.extraction.subdivide.split_by_layers`) and reduced to what the polygons are made of;
    the batches are concatenated, tile numbers offset.

    Parameters
    ----------
    net : PLGraph
        The network, in the dtype and on the device of the extraction.
    kg : KuhnGrid
        The grid (:func:`kuhn_grid`).
    level : float
        The level of ``g``.
    tolerances : list of Tensor
        Sign tolerances of the whole box (:func:`nsr.extraction.tolerances.sign_tolerances`).
    facets : tuple of Tensor
        The encoder's planes over the box.
    progress : bool
        A bar over the batches.
    memory_limit : float, optional
        Bytes a batch's skeleton may hold.
    batch : int, optional
        Simplices per batch (default :data:`SIMPLEX_BATCH`).
    close : bool
        Keep what the caps need (:func:`nsr.extraction.surface.extract_mesh`'s ``close``).

    Returns
    -------
    arrays : _Arrays
        What the polygons are made of, tile by tile: the level set's edges (with ``close``, also the
        box facets') and their vertices (``tile_bits`` and ``walls`` set; in 3-D, ``vpos`` holds the sign
        words from the first neuron's on, ``word0``, which are all a mesh reads). The batches kept count
        against ``memory_limit`` as the next batch is cut.
    kept : int
        Simplices that held vertices to the end.
    unpaired : int
        Face keys that did not pair.
    stats : dict
        Counts and times.

    Examples
    --------
    The skeleton of a small grid network's level set, tile by tile, without face keys left unpaired:

    >>> import numpy as np, torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> from nsr.extraction.subdivide import encoder_facets
    >>> from nsr.extraction.tolerances import sign_tolerances
    >>> _ = torch.manual_seed(0)
    >>> net = GridMLP(in_dim=3, width=4, depth=2, n_levels=2, min_resolution=1, max_resolution=2, init_scale=1.0)
    >>> g = as_graph(net).to(dtype=torch.float64)
    >>> box = np.array([[-1.0, 1.0]] * 3)
    >>> lo, hi = torch.tensor(box[:, 0]), torch.tensor(box[:, 1])
    >>> facets = encoder_facets(g, lo, hi)
    >>> level = float(g(torch.zeros(1, 3, dtype=torch.float64)))
    >>> arr, kept, unpaired, stats = subdivide_simplices(g, kuhn_grid(g, box, facets), level,
    ...                                                  sign_tolerances(g, lo, hi, level), facets, False, None)
    >>> unpaired, 0 < kept <= stats["kuhn_simplices_kept"] <= 48, arr.tile_bits.shape[0] == stats["kuhn_simplices_kept"]
    (0, True, True)
    """
    from nsr.extraction.memory import default_memory_limit

    t0 = time.perf_counter()
    batch = batch or SIMPLEX_BATCH
    d = net.in_dim
    lv = float(level)
    tol_out = float(tolerances[-1][0])
    layout = ConstraintLayout(d, net.widths, len(facets[1]))
    local = local_layout(layout)  # what a batch is cut in; globalize maps its level set back
    word0 = layout.neuron_offset // 64 if d == 3 else 0  # the sign words a mesh reads (polylines: all)
    tables = simplex_tables(d, kg.box.device)
    limit = memory_limit if memory_limit is not None else default_memory_limit()
    cols: list[list[Tensor]] = [[] for _ in range(7)]
    v_off, kept, unpaired, n_done, n_batches, t_bounds, held_bytes = 0, 0, 0, 0, 0, 0.0, 0
    stats: dict[str, Any] = {}
    slab = 4
    n_slabs = -(-int(kg.count[0]) // slab)
    bar = _progress(n_slabs, "surface (slabs of simplices)", progress, unit="slab")

    def run(batch_: tuple[Tensor, ...]) -> None:
        nonlocal v_off, kept, unpaired, n_done, n_batches, held_bytes
        cells, perm, z0, flo, fhi = batch_
        sides = simplex_sides(kg, cells, perm, layout, tables)
        sk = simplex_skeleton(kg, cells, perm, layout, tables, local=local, sides=sides)
        sk.values = _Buffer(z0.reshape(-1, z0.shape[2]))
        for buf in (sk.x, sk.vzeros, sk.vpos, sk.vtile, sk.values):
            buf.reserve(RESERVE_VERTICES * len(cells))
        for buf in (sk.edges, sk.ezeros):
            buf.reserve(RESERVE_EDGES * len(cells))
        lo, hi = kg.positions(cells), kg.positions(cells + 1)
        tile_bounds = TileBounds(net, lo, hi, sources={INPUT: (lo, hi), ENCODED: (flo, fhi)})
        alive = torch.ones(len(lo), dtype=torch.bool, device=lo.device)
        keep_negative = (sk.vzeros.t.view(len(cells), -1) < 2 * d).any(1) if close else None
        # the batches already kept count against the budget (surface mode's factor: what a batch's peak needs)
        room = None if limit is None else limit - _HELD_FACTOR["surface"] * held_bytes
        split_by_layers(net, sk, alive, tile_bounds, local, lv, prune=True, keep_negative=keep_negative, band=None,
                        region_layers=3, max_value_bytes=2**30, limit=room, tolerances=tolerances, bar=None,
                        desc="surface", prune_from=1, carry=True,
                        region_from=1 if net.n_layers > 1 and net.affine(1).n >= REGION_WIDTH else 2)
        # keep what the polygons are made of: the level set's edges (and the box facets' for the caps)
        ez = sk.ezeros.t
        on = ez[:, -1] == local.output
        if close:
            on |= (ez < 2 * d).any(1)
        edges = sk.edges.t[on].long()
        used = torch.unique(edges)
        remap = torch.full((sk.n_vertices,), -1, dtype=torch.int64, device=edges.device)
        remap[used] = torch.arange(len(used), device=edges.device)
        vtile = sk.vtile.t[used]
        vz, vp, ez = globalize(sk.vzeros.t[used], sk.vpos.t[used], vtile, ez[on], sk.vtile.t[edges[:, 0]], sides,
                               local, layout, word0)
        for i, arr in enumerate((sk.x.t[used], vz, vp, vtile + n_done, (remap[edges] + v_off).int(), ez, sides[1])):
            cols[i].append(arr)
            held_bytes += arr.element_size() * arr.numel()
        v_off += len(used)
        kept += int(torch.unique(sk.vtile.t).numel()) if sk.n_vertices else 0
        unpaired += sk.unpaired
        n_done += len(cells)
        n_batches += 1
        for key, val in sk.stats.items():
            if key.startswith("regions_"):
                stats[key] = stats.get(key, 0) + int(val)

    # slabs stream into batches of ``batch`` simplices: one batch's skeleton is held at a time
    pending: list[tuple[Tensor, ...]] = []
    held = 0
    try:
        slabs = _candidate_slabs(net, kg, lv, tol_out, stats, slab, close)
        while True:
            t1 = time.perf_counter()
            part = next(slabs, None)
            t_bounds += time.perf_counter() - t1
            if part is None:
                break
            if bar is not None:
                bar.update(1)
            pending.append(part)
            held += len(part[0])
            while held >= batch:
                joined = [torch.cat(c) for c in zip(*pending)]
                pending = [tuple(c[batch:] for c in joined)]
                held -= batch
                run(tuple(c[:batch] for c in joined))
        if held:
            run(tuple(torch.cat(c) for c in zip(*pending)))
    finally:
        if bar is not None:
            bar.close()
    stats["kuhn_bounds_s"] = t_bounds
    m = n_done
    stats["kuhn_batches"] = n_batches
    x_dt, dev = kg.box.dtype, kg.box.device
    n_w = n_words(layout.n_constraints)
    empty = [torch.zeros(0, d, dtype=x_dt, device=dev), torch.zeros(0, d, dtype=torch.int32, device=dev),
             torch.zeros(0, n_w - word0, dtype=torch.int64, device=dev), torch.zeros(0, dtype=torch.int32, device=dev),
             torch.zeros(0, 2, dtype=torch.int32, device=dev), torch.zeros(0, d - 1, dtype=torch.int32, device=dev),
             torch.zeros(0, n_w, dtype=torch.int64, device=dev)]
    x, vz, vp, vt, e, ez, tb = (torch.cat(c) if c else z for c, z in zip(cols, empty))
    arr = _Arrays(x, vz, vp, vt, e, ez, torch.zeros(max(m, 1), d, dtype=torch.int64, device=dev), 1,
                  n_facets=len(facets[1]), walls=layout.neuron_offset, tile_bits=tb, word0=word0)
    stats["kuhn_subdivision_s"] = time.perf_counter() - t0 - stats["kuhn_bounds_s"]
    return arr, kept, unpaired, stats
