"""Edge subdivision driver: tiles split by encoder planes, every neuron, and the level set."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nsr.extraction.evaluate import _evaluate
from nsr.extraction.memory import _check_memory, default_memory_limit
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
from nsr.pl.graph import PLGraph, as_graph
from nsr.pl.layout import ConstraintLayout

if TYPE_CHECKING:
    from nsr.extraction.pruning import Band
    from nsr.extraction.skeleton import _Skeleton


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
    Returns the skeleton and the tiles kept.
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
    lv = 0.0 if level is None else float(level)
    if tolerances is None:
        tolerances = sign_tolerances(net, box_lo, box_hi, lv)
    tol_out = float(tolerances[-1][0])
    out_layer = net.n_layers
    n_layers = out_layer + 1 if level is not None else out_layer
    bar = _progress(layout.n_facets + n_neurons + (1 if level is not None else 0), desc, progress)
    t0 = time.perf_counter()
    itemsize = torch.finfo(tile_lo.dtype).bits // 8
    limit = memory_limit if memory_limit is not None else default_memory_limit()
    tile_ranges: list[tuple[Tensor, Tensor]] = []
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
        for p in range(layout.n_facets):  # the encoder's planes: affine in x, so split first
            split_by_constraint(sk, None, sk.x.t @ normals[p] - offsets[p], layout.facet(p), facet_tol[p])
            _check_memory(sk, None, limit, 0, n_neurons, desc)
            if bar is not None:
                bar.update(1)
        c = layout.neuron_offset
        for layer in range(n_layers):
            width = net.affine(layer).n
            if prune and layer < out_layer:  # at the output the split itself finds the crossings
                if sk.n_vertices * width * itemsize * 2 <= max_value_bytes:
                    sk.values = _Buffer(_evaluate(net, sk.x.t, layer, 0, width, 0.0))
                # not before layer 2: after one layer the regions are many and far from the output, so
                # their bounds cost more than they save (trained 4x128 bunny: minutes at layer 1)
                by_region = keep_negative is None and layer >= max(2, out_layer - region_layers)
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
                del values
                j0 += cols
    finally:
        if bar is not None:
            bar.close()
    sk.stats["subdivision_s"] = time.perf_counter() - t0
    sk.stats["tiles_alive"] = int(alive.sum())
    sk.stats["uncertain_signs"] = int(sk.uncertain)
    warn_unpaired(sk.unpaired, tile_lo.dtype)
    warn_uncertain(sk.stats["uncertain_signs"], tile_lo.dtype)
    return sk, alive


def encoder_facets(graph: PLGraph, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The encoder's planes over the box ``lo, hi`` ``(D,)``: normals ``(P, D)``, offsets
    ``(P,)`` and their sign tolerances ``(P,)`` (:func:`facet_tolerances`); ``P = 0`` without an
    encoder. Computed once per box so that every tile and worker numbers them alike."""
    if graph.encoder is None:
        empty = lo.new_zeros(0)
        return lo.new_zeros(0, graph.in_dim), empty, empty
    normals, offsets = graph.encoder.planes(lo, hi)
    normals, offsets = normals.to(lo), offsets.to(lo)
    return normals, offsets, facet_tolerances(normals, offsets, lo, hi)
