"""Edge subdivision driver: tiles split by encoder planes, every neuron, and the level set."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nsr.extraction.encoder_split import split_by_encoder
from nsr.extraction.evaluate import _evaluate
from nsr.extraction.memory import _check_memory, check_first_layer_memory, default_memory_limit, first_layer_vertices
from nsr.extraction.progress import _progress
from nsr.extraction.pruning import (
    TileBounds,
    _prune_regions,
    _prune_regions_bounded,
    _tiles_reaching,
    may_reach,
    output_bounds,
)
from nsr.extraction.skeleton import _Buffer, _prune_tiles, box_skeleton, split_by_constraint
from nsr.extraction.tolerances import facet_tolerances, sign_tolerances, warn_uncertain, warn_unpaired
from nsr.networks import PLNetwork
from nsr.pl.graph import INPUT, PLGraph, as_graph
from nsr.pl.layout import ConstraintLayout

if TYPE_CHECKING:
    from nsr.extraction.pruning import Band
    from nsr.extraction.skeleton import _Skeleton

# Cut each tile only by the encoder planes that cross it (nsr.extraction.encoder_split); False restores
# the loop that cuts every plane through every tile (the same skeleton, kept for comparisons).
CULL_ENCODER_PLANES = True
# Drop the cells of the encoder's planes whose output provably misses the level before layer 0 (surface mode).
PRUNE_ENCODER_CELLS = True


def subdivide(
    net: PLGraph | PLNetwork,
    tile_lo: Tensor,
    tile_hi: Tensor,
    *,
    level: float | None = None,
    prune: bool = False,
    keep_negative: Tensor | None = None,
    band: Band | None = None,
    region_layers: int = 3,
    progress: bool = True,
    desc: str = "extract",
    max_value_bytes: int = 2**30,
    memory_limit: float | None = None,
    tolerances: list[Tensor] | None = None,
    facets: tuple[Tensor, Tensor, Tensor] | None = None,
    active: Tensor | None = None,
) -> tuple[_Skeleton, Tensor]:
    """Edge subdivision of ``K`` disjoint tiles ``(K, D)`` by every hidden neuron, and by the
    output level set ``f = level`` if ``level`` is given.

    ``prune=True`` drops, before each layer, tiles whose output provably cannot reach
    ``level`` (interval bounds from the exact range of that layer's pre-activations over the
    tile, which are affine on every current cell and so extreme at vertices), except tiles
    marked in ``keep_negative`` (bool per tile) that are below the level. Before each of the
    last ``region_layers`` hidden layers (from layer 2 on), regions are pruned one by one (interval and
    linear bounds from the exact range of the layer over each region, see
    :func:`_prune_regions_bounded`), and with a ``band``, regions whose bounding box misses
    it. ``tolerances`` are :func:`sign_tolerances` of the whole box (default: over the tiles
    given); pass the same ones to every batch of tiles of one box. A graph with an encoder is
    first split by the encoder's planes (``facets``: normals ``(P, D)``, offsets ``(P,)`` and
    tolerances ``(P,)``, from :func:`encoder_facets` of the whole box; default: over the tiles
    given), constraint ids ``2D .. 2D+P-1``, after which every layer is affine on every edge.
    ``active`` (bool per tile) subdivides only those tiles while keeping every tile's number (face
    keys, and so the order edges are found in, hold it: batches of one tiling then round alike).
    Returns the skeleton and the tiles kept.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network, in the dtype and on the device of the tiles.
    tile_lo, tile_hi : (K, D) float Tensor
        Corners of ``K`` disjoint tiles.
    level : float, optional
        Also split by the output level set ``f = level``; ``None``: the complex of the hidden neurons only.
    prune : bool
        Drop tiles (and, in the last ``region_layers`` layers, regions) that provably miss the level.
    keep_negative : (K,) bool Tensor, optional
        Tiles kept by pruning where the output is below the level (to close the surface with the box).
    band : Band, optional
        Drop regions whose bounding box misses this occupancy grid.
    region_layers : int
        How many of the last hidden layers prune region by region.
    progress : bool
        A progress bar (a line per tenth of the work in a log file).
    desc : str
        The bar's label; also the mode named by the memory guard.
    max_value_bytes : int
        Most bytes of carried pre-activations held at a time (the layer is evaluated in column blocks).
    memory_limit : float, optional
        Bytes the skeleton may hold before a ``MemoryError``; default :func:`default_memory_limit`.
    tolerances : list of (n_k,) float Tensor, optional
        Sign tolerances of the whole box, per layer then the output.
    facets : tuple of Tensor, optional
        The encoder's planes over the whole box, from :func:`encoder_facets`.

    Returns
    -------
    skeleton : _Skeleton
        Vertices, edges, sign vectors and ``stats`` (``subdivision_s``, ``tiles_alive``,
        ``uncertain_signs``, regions kept per layer when pruning).
    alive : (K,) bool Tensor
        The tiles kept (all of them without pruning).

    Examples
    --------
    The octahedron network's three planes cut ``[-1, 1]^3`` into the 3x3x3 grid of its octants;
    the level set adds the octahedron's 6 vertices:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    >>> sk, alive = subdivide(octahedron_network(), lo, hi, progress=False)
    >>> sk.n_vertices, sk.n_edges, alive.tolist()
    (27, 54, [True])
    >>> sk, _ = subdivide(octahedron_network(), lo, hi, level=0.0, progress=False)
    >>> sk.n_vertices, sk.n_edges, sk.unpaired
    (33, 72, 0)

    Pruning drops a tile where ``|x| + |y| + |z| >= 1.8`` cannot reach 0.5:

    >>> tile_lo = torch.tensor([[-1, -1, -1], [0.6, 0.6, 0.6]], dtype=torch.float64)
    >>> tile_hi = torch.tensor([[0, 0, 0], [1, 1, 1]], dtype=torch.float64)
    >>> subdivide(octahedron_network(), tile_lo, tile_hi, level=0.0, prune=True, progress=False)[1].tolist()
    [True, False]
    """
    net = as_graph(net)
    d = net.in_dim
    n_neurons = net.n_neurons
    if facets is None or tolerances is None:
        box_lo, box_hi = tile_lo.min(0).values, tile_hi.max(0).values
    if facets is None:
        facets = encoder_facets(net, box_lo, box_hi)
    layout = ConstraintLayout(d, net.widths, len(facets[1]))
    sk = box_skeleton(tile_lo, tile_hi, layout.n_constraints)
    n_tiles = tile_lo.shape[0]
    alive = torch.ones(n_tiles, dtype=torch.bool, device=tile_lo.device)
    if active is not None:
        alive &= active
        _prune_tiles(sk, alive)
    lv = 0.0 if level is None else float(level)
    if tolerances is None:
        tolerances = sign_tolerances(net, box_lo, box_hi, lv)
    tol_out = float(tolerances[-1][0])
    bar = _progress(layout.n_facets + n_neurons + (1 if level is not None else 0), desc, progress)
    t0 = time.perf_counter()
    itemsize = torch.finfo(tile_lo.dtype).bits // 8
    limit = memory_limit if memory_limit is not None else default_memory_limit()
    if not layout.n_facets and net.n_layers and net.affine(0).sources == [INPUT]:
        # a first layer whose planes alone make more vertices than the budget holds is refused before
        # any cut (a 512-wide one: at once, where the cuts ran 47 s before the guard below stopped them)
        first = net.affine(0)
        n_v = first_layer_vertices(first.blocks[INPUT], first.bias, tile_lo[alive], tile_hi[alive])
        check_first_layer_memory(n_v, d, first.n, layout.n_constraints, itemsize, limit, desc)
    tile_bounds = TileBounds(net, tile_lo, tile_hi)
    try:
        normals, offsets, facet_tol = facets
        if prune and layout.n_facets:
            # An encoder has many planes (thousands at fine levels), each cut through every vertex: first
            # drop the tiles whose output provably misses the level, bounded through the encoder's
            # feature ranges, as the layers below drop them from their exact ranges.
            olo, ohi = output_bounds(net, tile_lo, tile_hi)
            reach = may_reach(olo, ohi, lv, tol_out)
            if keep_negative is not None:
                reach |= keep_negative & (ohi < lv + tol_out)
            alive &= reach
            _prune_tiles(sk, alive)
        if layout.n_facets and CULL_ENCODER_PLANES:  # the encoder's planes: affine in x, so split first
            split_by_encoder(sk, tile_lo, tile_hi, alive, layout, facets, limit, n_neurons, desc, bar)
        else:
            for p in range(layout.n_facets):
                split_by_constraint(sk, None, sk.x.t @ normals[p] - offsets[p], layout.facet(p), facet_tol[p])
                _check_memory(sk, None, limit, 0, n_neurons, desc)
                if bar is not None:
                    bar.update(1)
            sk.stats["encoder_pairs"] = int(alive.sum()) * layout.n_facets
            sk.stats["encoder_vertices"] = sk.n_vertices
        if layout.n_facets:
            if prune and keep_negative is None and PRUNE_ENCODER_CELLS and sk.n_edges:
                # Every cell of the encoder's planes is affine in the features, so layer 0 is exact at its
                # vertices and the output's bounds on such a small cell are tight: drop the cells that miss
                # the level before any neuron cuts them.
                width0 = net.affine(0).n
                if sk.n_vertices * width0 * itemsize * 2 <= max_value_bytes:  # one evaluation for both passes
                    sk.values = _Buffer(_evaluate(net, sk.x.t, 0, 0, width0, 0.0))
                sk.stats["regions_kept_encoder"] = _prune_regions_bounded(net, sk, 0, lv, tol_out)
            sk.stats["encoder_split_s"] = time.perf_counter() - t0
            sk.values = None  # the layer loop evaluates layer 0 afresh on the vertices kept (as it always has)
        alive = split_by_layers(net, sk, alive, tile_bounds, layout, level, prune=prune, keep_negative=keep_negative,
                                band=band, region_layers=region_layers, max_value_bytes=max_value_bytes,
                                limit=limit, tolerances=tolerances, bar=bar, desc=desc)
    finally:
        if bar is not None:
            bar.close()
    sk.stats["subdivision_s"] = time.perf_counter() - t0
    sk.stats["tiles_alive"] = int(alive.sum())
    sk.stats["uncertain_signs"] = int(sk.uncertain)
    warn_unpaired(sk.unpaired, tile_lo.dtype)
    warn_uncertain(sk.stats["uncertain_signs"], tile_lo.dtype)
    return sk, alive


def split_by_layers(net: PLGraph, sk: _Skeleton, alive: Tensor, tile_bounds: TileBounds, layout: ConstraintLayout,
                    level: float | None, *, prune: bool, keep_negative: Tensor | None, band: Band | None,
                    region_layers: int, max_value_bytes: int, limit: float | None, tolerances: list[Tensor],
                    bar: Any, desc: str, prune_from: int = 0, carry: bool = False, region_from: int = 2) -> Tensor:
    """Cut the skeleton by every hidden neuron, layer by layer, then by the level set (the loop of
    :func:`subdivide`, once its tiles are made and cut by the encoder's planes, for tiles of any shape:
    boxes, or simplices of :mod:`nsr.extraction.kuhn`). With ``prune``, tiles and then regions that
    provably miss the level are dropped before each layer (see :func:`subdivide`). Pre-activations
    of layer 0 already in ``sk.values`` are used as they are; layers before ``prune_from`` are not
    pruned (their tiles are already bounded from the same ranges). With ``carry``, a layer that reads
    the previous one alone is computed from that layer's values as the splits carried them (interpolated
    along edges), not evaluated afresh from the points.

    Parameters
    ----------
    net : PLGraph
        The network.
    sk : _Skeleton
        The tiles' skeleton, every layer before layer 0 (the encoder) already affine on each edge; mutated.
    alive : (K,) bool Tensor
        The tiles still subdivided.
    tile_bounds : TileBounds
        Bounds over the tiles, tightened layer by layer.
    layout : ConstraintLayout
        Constraint ids.
    level : float, optional
        Also cut by ``g = level``.
    prune, keep_negative, band, region_layers, max_value_bytes : as for :func:`subdivide`
    limit : float, optional
        Bytes the skeleton may hold.
    tolerances : list of Tensor
        Sign tolerances per layer, then the output's.
    bar : tqdm-like, optional
        Advanced once per neuron.
    desc : str
        The mode the memory guard names.
    prune_from : int
        First layer pruned.
    carry : bool
        Compute each layer from the carried values of the previous one where it reads that alone.
    region_from : int
        First layer whose regions may be pruned one by one (box tiles: 2, see the comment below).

    Returns
    -------
    (K,) bool Tensor
        The tiles kept.

    Examples
    --------
    The octahedron network's three planes cut ``[-1, 1]^3`` into 27 boxes, as :func:`subdivide` does:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> from nsr.extraction.skeleton import box_skeleton
    >>> from nsr.extraction.tolerances import sign_tolerances
    >>> g = as_graph(octahedron_network())
    >>> lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    >>> layout = ConstraintLayout(3, g.widths, 0)
    >>> sk = box_skeleton(lo, hi, layout.n_constraints)
    >>> tols = sign_tolerances(g, lo[0], hi[0], 0.0)
    >>> alive = split_by_layers(g, sk, torch.ones(1, dtype=torch.bool), TileBounds(g, lo, hi), layout, None,
    ...                         prune=False, keep_negative=None, band=None, region_layers=3, max_value_bytes=2**30,
    ...                         limit=None, tolerances=tols, bar=None, desc="doc")
    >>> sk.n_vertices, sk.n_edges, alive.tolist()
    (27, 54, [True])
    """
    lv = 0.0 if level is None else float(level)
    tol_out = float(tolerances[-1][0])
    out_layer = net.n_layers
    n_layers = out_layer + 1 if level is not None else out_layer
    n_neurons = net.n_neurons
    itemsize = sk.x.t.element_size()
    tile_ranges: list[tuple[Tensor, Tensor]] = []
    c = layout.neuron_offset
    carried: Tensor | None = None  # the previous layer's values at every vertex (with carry)
    for layer in range(n_layers):
        width = net.affine(layer).n
        if carried is not None and net.affine(layer).sources == [layer - 1]:
            z = net.affine(layer).apply({layer - 1: net.layers[layer - 1].activate(carried)})
            sk.values = _Buffer(z - lv if layer == out_layer and lv else z)
            if sk.x.reserved:
                sk.values.reserve(sk.x.reserved)
        carried = None
        if prune and layer < min(prune_from, out_layer):  # the exact ranges only, for the later layers' bounds
            alive &= _tiles_reaching(net, sk, layer, tile_bounds, lv, keep_negative, tile_ranges, tol_out, bound=False)
        elif prune and layer < out_layer:  # at the output the split itself finds the crossings
            if sk.values is None and sk.n_vertices * width * itemsize * 2 <= max_value_bytes:
                sk.values = _Buffer(_evaluate(net, sk.x.t, layer, 0, width, 0.0))
            # box tiles not before layer 2: after one layer the regions are many and far from the output,
            # so their bounds cost more than they save (trained 4x128 bunny: minutes at layer 1); a
            # simplex tile's few regions next to a wide layer pay from layer 1 (nsr.extraction.kuhn)
            by_region = keep_negative is None and layer >= max(region_from, out_layer - region_layers)
            if not by_region:  # per-region bounds subsume the tile's
                alive &= _tiles_reaching(net, sk, layer, tile_bounds, lv, keep_negative, tile_ranges,
                                         tol_out)
                _prune_tiles(sk, alive)
            if band is not None and layer > 0 and sk.n_edges:
                sk.stats[f"regions_kept_layer{layer}"] = _prune_regions(sk, band)
            if by_region and sk.n_edges:
                sk.stats[f"regions_kept_layer{layer}"] = _prune_regions_bounded(net, sk, layer, lv, tol_out)
        j0 = 0
        while j0 < width:
            # Pre-activations of this layer are affine on every current edge, so new
            # vertices inherit interpolated values; only a block of columns is kept at a
            # time (fresh evaluation per block) to bound memory.
            cols = max(1, min(width - j0, max_value_bytes // max(1, sk.n_vertices * itemsize * 2)))
            if sk.values is not None:  # evaluated for pruning, filtered with the vertices
                values, sk.values, cols = sk.values, None, width
            else:
                values = _Buffer(_evaluate(net, sk.x.t, layer, j0, j0 + cols, lv if layer == out_layer else 0.0))
            tol = tolerances[layer]
            if layer == out_layer:
                # A dropped region provably holds no vertex on either side of the level set's
                # cut (may_reach), so the level set cuts only complete faces: every key pairs.
                sk.partial = False
            for j in range(cols):
                split_by_constraint(sk, values, values.t[:, j].clone(), c, tol[j0 + j])
                _check_memory(sk, values, limit, c - layout.neuron_offset, n_neurons, desc)
                c += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(layer=layer, V=sk.n_vertices, E=sk.n_edges, refresh=False)
            if carry and cols == width:
                carried = values.t
            del values
            j0 += cols
    return alive


def encoder_facets(graph: PLGraph, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The encoder's planes over the box ``lo, hi`` ``(D,)``: normals ``(P, D)``, offsets
    ``(P,)`` and their sign tolerances ``(P,)`` (:func:`facet_tolerances`); ``P = 0`` without an
    encoder. Computed once per box so that every tile and worker numbers them alike.

    Parameters
    ----------
    graph : PLGraph
        The network.
    lo, hi : (D,) float Tensor
        Corners of the box; the planes come back in their dtype and on their device.

    Returns
    -------
    normals : (P, D) float Tensor
    offsets : (P,) float Tensor
        The planes ``normals . x = offsets``.
    tolerances : (P,) float Tensor
        Their sign tolerances.

    Examples
    --------
    A grid encoding of resolution 2 on ``[-1, 1]^2`` is affine on the triangles cut by
    ``x = 0``, ``y = 0`` and ``x - y = -1, 0, 1``; a plain MLP has no planes:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.encoding import GridMLP
    >>> grid = GridMLP(in_dim=2, width=8, depth=1, n_levels=1, min_resolution=2, max_resolution=2)
    >>> lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> normals, offsets, tol = encoder_facets(as_graph(grid).to(dtype=torch.float64), lo, hi)
    >>> normals.tolist(), offsets.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]], [0.0, 0.0, -1.0, 0.0, 1.0])
    >>> lo3, hi3 = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    >>> encoder_facets(as_graph(octahedron_network()), lo3, hi3)[0].shape
    torch.Size([0, 3])
    """
    if graph.encoder is None:
        empty = lo.new_zeros(0)
        return lo.new_zeros(0, graph.in_dim), empty, empty
    normals, offsets = graph.encoder.planes(lo, hi)
    normals, offsets = normals.to(lo), offsets.to(lo)
    return normals, offsets, facet_tolerances(normals, offsets, lo, hi)
