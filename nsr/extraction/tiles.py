"""Surface mode's tiles: the grid of tiles over the box, how many, and subdividing them in batches
(one batch of an encoder's split held at a time) or in worker processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr.extraction.guards import no_tf32
from nsr.extraction.polygons import _Arrays
from nsr.extraction.progress import _progress
from nsr.extraction.pruning import Band
from nsr.extraction.subdivide import subdivide
from nsr.networks import PLNetwork
from nsr.pl.encoding import levels_nest
from nsr.pl.graph import PLGraph, as_graph


def tile_grid(bounds: np.ndarray, grid: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The ``grid^D`` tiles of the box: ``(lo, hi, index)``, each ``(K, D)``. Tile planes are
    computed once per grid line, so neighbouring tiles share them bitwise.

    Parameters
    ----------
    bounds : (D, 2) float ndarray
        The box.
    grid : int
        Tiles per axis.
    dtype : torch.dtype
        Dtype of the corners.
    device : torch.device
        Device of the corners.

    Returns
    -------
    lo, hi : (grid^D, D) Tensor
        Corners of each tile; the last tick of every axis is the box's ``hi`` exactly.
    index : (grid^D, D) int64 Tensor
        Grid index of each tile (last axis fastest).

    Examples
    --------
    >>> import numpy as np, torch
    >>> lo, hi, index = tile_grid(np.array([[-1.0, 1.0], [0.0, 1.0]]), 2, torch.float64, torch.device("cpu"))
    >>> lo.tolist()
    [[-1.0, 0.0], [-1.0, 0.5], [0.0, 0.0], [0.0, 0.5]]
    >>> hi.tolist()
    [[0.0, 0.5], [0.0, 1.0], [1.0, 0.5], [1.0, 1.0]]
    >>> index.tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    d = bounds.shape[0]
    lo_b = torch.as_tensor(bounds[:, 0], dtype=dtype, device=device)
    hi_b = torch.as_tensor(bounds[:, 1], dtype=dtype, device=device)
    ticks = [lo_b[a] + (hi_b[a] - lo_b[a]) * torch.arange(grid + 1, device=device, dtype=dtype) / grid
             for a in range(d)]
    for a in range(d):
        ticks[a][-1] = hi_b[a]
    idx = torch.cartesian_prod(*[torch.arange(grid, device=device)] * d).reshape(-1, d)
    tlo = torch.stack([ticks[a][idx[:, a]] for a in range(d)], 1)
    thi = torch.stack([ticks[a][idx[:, a] + 1] for a in range(d)], 1)
    return tlo, thi, idx


def default_tiles(net: PLGraph | PLNetwork) -> int:
    """Tiles per axis for surface mode. Tiles are the unit of independent work; every tile
    also adds the vertices its faces cut from the complex, so a few suffice: the pruning of
    regions, not of tiles, does most of the work. Plain networks get 2 per axis: small ones
    are dominated by per-tile overhead (a 32x3 network: 0.31 s with 2^3 tiles, 0.53 s with
    8^3), and since region pruning got cheaper (issue 16) large ones are too: one process,
    CPU time, 2^3 / 4^3 / 8^3 tiles, a trained 4x64 bunny 21.7-19.2 / 25.8-23.5 / 26.8-25.3 s,
    the shared 8x32 bunny 51.3 / 51.8 / 54.0 s, the same polygons. A simplex-grid encoder gets
    about one tile per 12 cells of its finest level where its levels nest, per 6 cells where they
    do not (2 to 32 per axis). (Surface mode tiles a nested grid by its simplices instead where the
    box is made of cells of its finest level, :mod:`nsr.extraction.kuhn`; these tiles serve the
    other boxes, ``tiles=`` and ``band=``.)

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network.

    Returns
    -------
    int
        For a simplex-grid encoder, its finest resolution over 12 (nested levels) or 6 (2 to 32);
        otherwise 2.

    Examples
    --------
    >>> from nsr.networks import random_network
    >>> from nsr.pl.encoding import GridMLP
    >>> default_tiles(random_network(3, [8, 8])), default_tiles(random_network(3, [64, 64, 64]))
    (2, 2)
    >>> nested = GridMLP(in_dim=3, width=4, depth=1, n_levels=5, min_resolution=6, max_resolution=96)
    >>> overlaid = GridMLP(in_dim=3, width=4, depth=1, n_levels=6, min_resolution=8, max_resolution=96)
    >>> default_tiles(nested), default_tiles(overlaid)
    (8, 16)
    """
    net = as_graph(net)
    resolutions = getattr(getattr(net.encoder, "encoding", None), "resolutions", None)
    if resolutions:
        # A simplex grid: every tile is cut by all the planes crossing it before cells are pruned, so a tile's
        # cost grows with the cube of its side; tiles of about 6 cells of the finest level were the fastest on
        # a trained bunny grid (6 levels 8..96, a surface sub-box: 16.1 s with tiles of 1/16 of the box, 18.4 s
        # with 1/32, 22.7 s with 1/64, 20.4 s with 1/8). Nested levels (one Kuhn grid, fewer planes per tile)
        # favour 12 cells: the grid_cpu bunny, whole box, one process, 8^3 tiles 154.8 / 175.9 s against 16^3
        # 202.1 / 199.5 s (both orders), 32^3 338 s (experiments/RESULTS.md, "Nested grid levels").
        cells = 12 if levels_nest(resolutions) else 6
        return int(min(32, max(2, max(resolutions) // cells)))
    return 2


def default_band(net: PLGraph | PLNetwork) -> int:
    """Cells per axis of the grid on which surface mode bounds the output (a power of two).

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network (not read: the default is the same for every network).

    Returns
    -------
    int
        0 (off): region pruning by linear bounds does the band's work.

    Examples
    --------
    >>> from nsr.networks import random_network
    >>> default_band(random_network(3, [8]))
    0
    """
    return 0



def _subdivision_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats of :func:`subdivide` that surface mode reports (region pruning, the encoder split)."""
    return {k: v for k, v in stats.items() if k.startswith(("regions_", "encoder_")) or k == "uncertain_signs"}


def _subdivide_in_batches(net: PLGraph, tlo: Tensor, thi: Tensor, tidx: Tensor, grid: int, level: float,
                          keep_negative: Tensor | None, cells: Band | None, batches: list[Tensor], progress: bool,
                          memory_limit: float | None, tolerances: list[Tensor], facets: tuple[Tensor, Tensor, Tensor]
                          ) -> tuple[_Arrays, int, int, dict[str, Any]]:
    """Subdivide the tiles batch by batch (:func:`nsr.extraction.encoder_split.tile_batches`), so that one
    batch's encoder split, not the whole box's, is held before pruning; concatenate the skeletons (vertex
    indices offset; tiles keep their numbers). Tiles are independent and stitched by identity, so the
    polygons are the same."""
    cols: list[list[Tensor]] = [[] for _ in range(6)]
    v_off, kept, unpaired = 0, 0, 0
    stats: dict[str, Any] = {}
    bar = _progress(len(batches), "surface (batches of tiles)", progress)
    try:
        for idx in batches:
            active = torch.zeros(len(tlo), dtype=torch.bool, device=tlo.device)
            active[idx] = True
            sk, _ = subdivide(net, tlo, thi, level=level, prune=True, keep_negative=keep_negative, band=cells,
                              progress=False, desc="surface", memory_limit=memory_limit, tolerances=tolerances,
                              facets=facets, active=active)
            for i, t in enumerate((sk.x.t, sk.vzeros.t, sk.vpos.t, sk.vtile.t, sk.edges.t + v_off, sk.ezeros.t)):
                cols[i].append(t)
            v_off += sk.n_vertices
            kept += sk.stats["tiles_alive"]
            unpaired += sk.unpaired
            for k, v in _subdivision_stats(sk.stats).items():
                stats[k] = stats.get(k, 0) + (int(v) if isinstance(v, Tensor) else v)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    stats["encoder_batches"] = len(batches)
    return _Arrays(*[torch.cat(c) for c in cols], tidx, grid), kept, unpaired, stats


def _subdivide_tiles(state: dict[str, np.ndarray], encoder: Any, tlo: np.ndarray, thi: np.ndarray,
                     level: float, keep_negative: np.ndarray | None, memory_limit: float | None,
                     tolerances: list[np.ndarray], facets: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
    """Worker: subdivide a batch of tiles; the graph's state (:meth:`PLGraph.layer_state`) and
    plain arrays in and out (picklable)."""
    torch.set_num_threads(1)
    net = PLGraph.from_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, encoder)
    with torch.no_grad(), no_tf32():
        sk, _ = subdivide(net, torch.from_numpy(tlo), torch.from_numpy(thi), level=level, prune=True,
                          keep_negative=None if keep_negative is None else torch.from_numpy(keep_negative),
                          progress=False, memory_limit=memory_limit,
                          tolerances=[torch.from_numpy(t) for t in tolerances],
                          facets=tuple(torch.from_numpy(f) for f in facets))  # type: ignore[arg-type]
    arrays = [b.t.numpy() for b in (sk.x, sk.vzeros, sk.vpos, sk.vtile, sk.edges, sk.ezeros)]
    return arrays, sk.stats["tiles_alive"], sk.unpaired


def _subdivide_in_workers(net: PLGraph, tlo: Tensor, thi: Tensor, tidx: Tensor, grid: int, level: float,
                          keep_negative: Tensor | None, workers: int, memory_limit: float | None,
                          tolerances: list[Tensor], facets: tuple[Tensor, Tensor, Tensor]
                          ) -> tuple[_Arrays, int, int]:
    """Split the tiles into ``workers`` batches, subdivide them in separate processes, and
    concatenate the skeletons (vertex and tile indices offset)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if net.device.type != "cpu":
        raise ValueError("workers > 1 runs on the CPU; use one process per GPU instead")
    parts = np.array_split(np.arange(len(tlo)), min(workers, len(tlo)))
    state = {k: v.numpy() for k, v in net.layer_state().items()}
    limit = None if memory_limit is None else memory_limit / len(parts)
    with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_subdivide_tiles, state, net.encoder, tlo[p].numpy(), thi[p].numpy(), level,
                               None if keep_negative is None else keep_negative[p].numpy(), limit,
                               [t.numpy() for t in tolerances], [f.numpy() for f in facets]) for p in parts]
        results = [f.result() for f in futures]
    cols: list[list[Tensor]] = [[] for _ in range(6)]
    v_off, t_off = 0, 0
    for (arrays, _, _), p in zip(results, parts):
        x, vz, vp, vt, e, ez = (torch.from_numpy(a) for a in arrays)
        for i, t in enumerate((x, vz, vp, vt + t_off, e + v_off, ez)):
            cols[i].append(t)
        v_off += len(x)
        t_off += len(p)
    merged = [torch.cat(c) for c in cols]
    order = torch.from_numpy(np.concatenate(parts))
    return (_Arrays(*merged, tidx[order], grid), sum(r[1] for r in results), sum(r[2] for r in results))
