"""Exact zero-level meshes of ReLU networks: :func:`extract_mesh` and its modes.

The level set ``f = level`` of a ReLU network is piecewise planar: every linear region the
surface crosses contributes one convex planar polygon, and polygons meet exactly along
shared edges. Vertices are welded by their combinatorial identity (sign-vector), never by
a distance tolerance.

Three modes give the same polygons:

* ``mode="complex"`` builds the whole complex over the box, then refines it by the level set.
* ``mode="surface"`` splits the box into a grid of tiles (:mod:`nsr.extraction.tiles`), drops
  tiles whose output provably cannot reach the level (interval bounds, tightened before every
  layer from the exact range of that layer's pre-activations over the tile), subdivides the
  remaining tiles, and stitches them: vertices by global identity, polygon pieces that only a
  tile plane split by the identity of their linear region. Vertices that only a tile plane
  created are removed, so the result equals complex mode.
* ``mode="track"`` walks the surface polygon by polygon from seed points
  (:mod:`nsr.extraction.tracking`).

Polygons are assembled, ordered, oriented and welded in :mod:`nsr.extraction.polygons`; the
result is an :class:`nsr.extraction.mesh.ExactMesh`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from nsr import limits
from nsr.extraction.complex import extract_complex
from nsr.extraction.encoder_split import tile_batches
from nsr.extraction.guards import as_bounds, check_box, no_tf32, resolve_dtype
from nsr.extraction.kuhn import kuhn_grid, subdivide_simplices
from nsr.extraction.memory import peak_memory_mb
from nsr.extraction.mesh import ExactMesh, _measure
from nsr.extraction.polygons import (
    _Arrays,
    _complex_arrays,
    _mesh_from_arrays,
    _mesh_from_tracks,
)
from nsr.extraction.pruning import Band, band_cells, may_reach
from nsr.extraction.subdivide import encoder_facets, subdivide
from nsr.extraction.tiles import (
    _subdivide_in_batches,
    _subdivide_in_workers,
    _subdivision_stats,
    default_band,
    default_tiles,
    tile_grid,
)
from nsr.extraction.tolerances import sign_tolerances, warn_unpaired
from nsr.networks import PLNetwork
from nsr.pl.bounds import output_bounds
from nsr.pl.graph import PLGraph, as_graph


def extract_mesh(
    net: Any,
    bounds: Any,
    *,
    mode: str = "surface",
    close: bool = False,
    level: float = 0.0,
    tiles: int | None = None,
    band: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    memory_limit: float | None = None,
    workers: int = 1,
    seeds: Any = None,
) -> ExactMesh:
    """The exact level set ``f = level`` of a piecewise-affine network over a box.

    Parameters
    ----------
    net : a :class:`~nsr.pl.PLGraph`, a :class:`~nsr.networks.PLNetwork`, an ``nn.Module``
        (traced by :func:`nsr.pl.trace`: skip and residual blocks, LeakyReLU/PReLU/abs/clamp,
        folded normalizations, latent codes) or anything :func:`nsr.pl.as_graph` reads; input
        dimension 2 or 3.
    level : a level of the module's output. A monotone output transform ``T`` (tanh,
        sigmoid, positive scalings) is undone: the mesh is the level set of the
        piecewise-affine ``g`` at ``graph.level(level)`` (``mesh.level``), the same set.
    bounds : ``(lo, hi)`` for every axis or a ``(D, 2)`` array.
    mode : ``"surface"`` (tiles, pruning; default), ``"complex"`` (the whole complex),
        ``"track"`` (grow the surface polygon by polygon from seed points, D = 3: work
        proportional to the surface, but a component of the level set that holds no seed is
        missed; see :mod:`nsr.extraction.tracking`) or ``"auto"`` (:func:`default_mode`: surface,
        except track for a 3-D grid network whose simplices surface mode cannot take as tiles
        over this box, or with ``tiles``, ``band`` or ``workers`` given; what the apps use). Where
        auto's surface mode would exceed the memory budget (wide networks: the regions near the
        surface outgrow the memory), auto warns and answers in track mode, whose memory grows with
        the surface only, under the same budget; ``stats["surface_mode_error"]`` keeps why.
    close : cap the surface with the box faces where the network is below ``level`` (D = 3).
    tiles : tiles per axis in surface mode (default: :func:`default_tiles`; on a simplex grid whose
        levels nest, over a box made of cells of its finest level, the default is the grid's own
        simplices, :mod:`nsr.extraction.kuhn`, and ``tiles`` or ``band`` ask for box tiles instead).
    band : cells per axis of the grid on which surface mode bounds the output by linear
        bound propagation (default: :func:`default_band`); regions whose bounding box misses
        every cell that may hold the surface are dropped before each layer.
    dtype, device, progress, memory_limit : as for :func:`nsr.extract_complex`; every mode
        stops with a ``MemoryError`` before it needs more than ``memory_limit`` bytes.
    workers : surface mode: subdivide the tiles in this many processes (one torch thread
        each; CPU only); tiles are independent and are stitched by identity afterwards. The
        processes are spawned, so a calling script needs the ``if __name__ == "__main__":``
        guard, and ``stats["peak_memory_mb"]`` counts the calling process only.
    seeds : track mode: an int ``R`` (default 64), seeding wherever the network changes
        sign along the edges of an ``R``-per-axis grid, or ``(M, D)`` points near the level set
        (e.g. the polygon centroids of an earlier mesh). Without any seed whose region crosses
        the level set, track mode falls back to surface mode.

    A network with no crossing in the box gives an empty mesh and a warning.

    Returns
    -------
    ExactMesh
        Polygons and triangles (D = 3) or polylines (D = 2), with ``stats`` (counts, timings,
        ``max_abs_f`` measured at the vertices, ``unpaired_face_keys`` 0 on healthy extractions).

    Raises
    ------
    ValueError
        For another input dimension, bad arguments (:class:`nsr.limits.ArgumentError`), or a
        box the dtype cannot answer on.
    MemoryError
        Where the extraction would exceed ``memory_limit`` (``mode="auto"``: where track mode, its
        answer to a surface mode over the budget, cannot answer either).

    Examples
    --------
    The octahedron network ``|x| + |y| + |z| - 0.5``, closed by the box ``[-0.3, 0.3]^3`` that
    cuts off its six tips (each a pyramid of volume ``0.08 * 0.2 / 3``):

    >>> from nsr.networks import octahedron_network
    >>> mesh = extract_mesh(octahedron_network(), (-0.3, 0.3), close=True, progress=False)
    >>> len(mesh.polygons), int(mesh.polygon_is_cap.sum()), mesh.stats["max_abs_f"]
    (32, 24, 0.0)
    >>> volume = mesh.to_trimesh().volume
    >>> round(float(volume), 12) == round(4 / 3 * 0.5**3 - 6 * 0.08 * 0.2 / 3, 12)
    True

    A 2-D network ``|x| + |y| - 0.5`` gives a closed polyline, the diamond:

    >>> import torch
    >>> from nsr.networks import PLNetwork
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> net = PLNetwork([torch.cat([eye, -eye]), torch.tensor([[2.0, 2.0, 1.0, 1.0]], dtype=torch.float64)],
    ...                 [torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=torch.float64),
    ...                  torch.tensor([-20.5], dtype=torch.float64)])
    >>> diamond = extract_mesh(net, (-1, 1), progress=False)
    >>> len(diamond.vertices), [len(p) for p in diamond.polylines], diamond.stats["max_abs_f"]
    (4, [5], 0.0)
    """
    net = as_graph(net)
    d = net.in_dim
    if d not in (2, 3):
        raise ValueError(
            f"extract_mesh needs a 2-D or 3-D network (polylines or a triangle mesh), got {d}-D; "
            "use nsr.extract_complex(net, bounds).level_set() for the level-set complex in any dimension"
        )
    requested = mode
    if mode == "auto":  # surface mode on a grid's simplices only: not with tiles, a band or workers
        mode = default_mode(net, bounds if simplex_tiles_allowed(tiles, band, workers) else None)
    dt = resolve_dtype(dtype)
    args = limits.check_extract_arguments(
        dim=d, n_neurons=net.n_neurons, max_width=max(net.widths, default=1), itemsize=dt.itemsize, mode=mode,
        level=level, tiles=tiles, band=band, workers=workers, seeds=seeds, memory_limit=memory_limit, close=close,
        progress=progress)
    module_level, memory_limit = args["level"], args["memory_limit"]
    level = net.level(module_level)  # the level of g with the same level set (identity: the same number)
    if mode == "track" and d != 3:
        raise ValueError(f"mode='track' needs a 3-D network, got {d}-D; use mode='surface'")
    if seeds is not None and mode != "track":
        raise ValueError("seeds are for mode='track'")
    if close and d != 3:
        raise ValueError("close=True needs a 3-D network")
    b = as_bounds(bounds, d)
    check_box(net, b, dt, level)
    dev = limits.check_device(device) if device is not None else net.device
    netd = net.to(device=dev, dtype=dt)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    with torch.no_grad(), no_tf32():
        mesh, why = None, ""
        if mode == "track":
            mesh, why = _track_mesh(netd, b, level, close, seeds, progress, memory_limit)
            if mesh is None:
                warnings.warn(f"track mode {why}; falling back to mode='surface'", stacklevel=2)
                mode = "surface"
        over_memory = ""
        if mesh is None:
            try:
                mesh = _subdivided_mesh(netd, b, mode, level, close, tiles, band, progress, memory_limit, workers)
            except MemoryError as err:
                # auto promised an answer, not a mode: where the complete mode does not fit the budget,
                # track mode (memory grows with the surface only) answers under the same budget. The
                # error's frames are freed first.
                if not (requested == "auto" and mode == "surface" and d == 3):
                    raise
                over_memory = str(err)
        if mesh is None:
            if not why:  # track mode not tried yet (auto chose surface mode)
                warnings.warn(f"mode='auto': surface mode (complete) does not fit in memory_limit here "
                              f"({over_memory}); using track mode, which misses only components of the level set "
                              "that no seed reaches", stacklevel=2)
                try:
                    mesh, why = _track_mesh(netd, b, level, close, seeds, progress, memory_limit)
                except MemoryError as err:
                    raise MemoryError(f"{over_memory} Track mode, tried instead by mode='auto': {err}") from None
            if mesh is None:
                raise MemoryError(f"{over_memory} Track mode, tried instead by mode='auto', {why}.")
            mode = "track"
            mesh.stats["surface_mode_error"] = over_memory
    mesh.stats.update(mode=mode, dtype=str(dt), device=str(dev), time_s=time.perf_counter() - t0,
                      peak_memory_mb=peak_memory_mb(dev))
    if requested != mode:
        mesh.stats["mode_requested"] = requested
    if not netd.transform.is_identity:
        mesh.stats.update(module_level=module_level, output_transform=netd.transform.describe())
    _measure(mesh, netd)
    if mesh.is_empty:
        warnings.warn(limits.empty_level_set_message(netd, b, level), stacklevel=2)
    return mesh


def simplex_tiles_allowed(tiles: int | None, band: int | None, workers: int) -> bool:
    """Whether surface mode may take a nested grid's simplices as its tiles: not where box tiles are asked
    for (``tiles``), nor with a band of cells or several workers, which work on box tiles.

    Parameters
    ----------
    tiles, band : int or None
        :func:`extract_mesh`'s options (``band`` 0 or None: none).
    workers : int
        Processes.

    Returns
    -------
    bool

    Examples
    --------
    >>> simplex_tiles_allowed(None, None, 1), simplex_tiles_allowed(2, None, 1), simplex_tiles_allowed(None, 0, 2)
    (True, False, False)
    """
    return tiles is None and not band and workers == 1


def default_mode(net: Any, bounds: Any = None) -> str:
    """The extraction mode ``mode="auto"`` picks: ``"surface"`` (complete), except ``"track"`` for a
    3-D network with an input encoder whose cells surface mode cannot write down over ``bounds``.

    On a simplex grid whose levels nest, over a box made of cells of its finest level (the training
    box, as the apps use it), surface mode subdivides the grid's simplices (:mod:`nsr.extraction.kuhn`):
    complete, and faster than marching cubes 256³ of the same network on the four ``grid_cpu``
    networks of the shared meshes (2 threads: 0.39-0.79x; track mode 0.26-0.68x, but it missed 112
    of the bunny's 243,908 polygons and 90 of fandisk's, components no seed reached;
    ``experiments/RESULTS.md``). Elsewhere (levels that do not nest, another box, or no ``bounds``
    given) surface mode cuts box tiles by the encoder's planes one at a time, 10-30x slower, and
    track mode is picked. On a wide grid (MLP 64x2 on levels to 256) the complete mode took about 4x
    track mode's time on a 2-core CPU (221-230 s against 51-60 s): pass ``mode="track"`` there for speed.
    (:func:`extract_mesh` with ``mode="auto"`` also tracks where surface mode stops at the memory
    budget.)

    Parameters
    ----------
    net : anything :func:`nsr.pl.as_graph` reads
    bounds : ``(lo, hi)`` for every axis or a ``(D, 2)`` array, optional
        The box to extract.

    Returns
    -------
    str

    Examples
    --------
    >>> from nsr.extraction.surface import default_mode
    >>> from nsr.networks import octahedron_network
    >>> from nsr.pl.encoding import GridMLP
    >>> grid = GridMLP(in_dim=3, width=4, depth=1, n_levels=2, min_resolution=2, max_resolution=4)
    >>> default_mode(octahedron_network()), default_mode(grid, (0, 1)), default_mode(grid, (0, 0.3)), default_mode(grid)
    ('surface', 'surface', 'track', 'track')
    """
    graph = as_graph(net)
    if graph.encoder is None or graph.in_dim != 3:
        return "surface"
    if bounds is None:
        return "track"
    b = as_bounds(bounds, 3)
    bt = torch.as_tensor(b, dtype=torch.float64, device=graph.device)  # the planes come in its dtype
    return "surface" if kuhn_grid(graph, b, encoder_facets(graph, bt[:, 0], bt[:, 1])) is not None else "track"


def _subdivided_mesh(netd: PLGraph, b: np.ndarray, mode: str, level: float, close: bool, tiles: int | None,
                     band: int | None, progress: bool, memory_limit: float | None, workers: int) -> ExactMesh:
    """Complex and surface modes of :func:`extract_mesh` (edge subdivision), with their stats."""
    t0 = time.perf_counter()
    d, dt, dev = netd.in_dim, netd.dtype, netd.device
    if mode == "complex":
        cx = extract_complex(netd, b, dtype=dt, device=dev, progress=progress,
                             memory_limit=memory_limit).refine(level)
        arr = _complex_arrays(cx)
        n_tiles, kept, unpaired = 1, 1, cx.stats["unpaired_face_keys"]
        n_facets = cx.layout.n_facets
    else:
        grid = tiles if tiles is not None else default_tiles(netd)
        if grid < 1:
            raise ValueError(f"tiles must be >= 1, got {grid}")
        res = band if band is not None else default_band(netd)
        if res < 0 or res & (res - 1):
            raise ValueError(f"band must be 0 (off) or a power of two, got {res}")
        t_band = time.perf_counter()
        bt = torch.as_tensor(b, dtype=dt, device=dev)
        # one tolerance per neuron for the whole box, whichever tiles or workers see it
        tols = sign_tolerances(netd, bt[:, 0], bt[:, 1], level)
        facets = encoder_facets(netd, bt[:, 0], bt[:, 1])
        n_facets = len(facets[1])
        kg = kuhn_grid(netd, b, facets) if simplex_tiles_allowed(tiles, res, workers) else None
        if kg is not None:  # a nested simplex grid: its simplices are the tiles
            arr, kept, unpaired, region_stats = subdivide_simplices(netd, kg, level, tols, facets, progress,
                                                                    memory_limit, close=close)
            warn_unpaired(unpaired, dt)
            cells, n_tiles, t_band = None, "simplices", region_stats["kuhn_bounds_s"]
        else:
            tlo, thi, tidx = tile_grid(b, grid, dt, dev)
            tol_out = float(tols[-1][0])
            cells = None
            if res:
                cells = Band(band_cells(netd, bt, res, level, close), bt[:, 0], bt[:, 1])
                sel = cells.hits(tlo, thi)
            else:
                olo, ohi = output_bounds(netd, tlo, thi)
                sel = may_reach(olo, ohi, level, tol_out)
                if close:
                    sel |= ((tidx == 0) | (tidx == grid - 1)).any(1) & (ohi < level + tol_out)
            t_band = time.perf_counter() - t_band
            tlo, thi, tidx = tlo[sel], thi[sel], tidx[sel]
            on_boundary = ((tidx == 0) | (tidx == grid - 1)).any(1)
            n_tiles = grid**d
            keep_neg = on_boundary if close else None
            region_stats: dict[str, Any] = {}
            if workers > 1 and len(tlo) > 1:
                arr, kept, unpaired = _subdivide_in_workers(netd, tlo, thi, tidx, grid, level, keep_neg,
                                                            workers, memory_limit, tols, facets)
                warn_unpaired(unpaired, dt)  # the workers' own warnings stay in their processes
            elif n_facets and len(batches := tile_batches(tlo, thi, facets)) > 1:
                arr, kept, unpaired, region_stats = _subdivide_in_batches(netd, tlo, thi, tidx, grid, level, keep_neg,
                                                                          cells, batches, progress, memory_limit,
                                                                          tols, facets)
                warn_unpaired(unpaired, dt)
            else:
                sk, alive = subdivide(netd, tlo, thi, level=level, prune=True, keep_negative=keep_neg,
                                      band=cells, progress=progress, desc="surface", memory_limit=memory_limit,
                                      tolerances=tols, facets=facets)
                arr = _Arrays(sk.x.t, sk.vzeros.t, sk.vpos.t, sk.vtile.t, sk.edges.t, sk.ezeros.t, tidx, grid)
                kept, unpaired = sk.stats["tiles_alive"], sk.unpaired
                region_stats = _subdivision_stats(sk.stats)
    t_sub = time.perf_counter() - t0
    arr.n_facets = n_facets
    mesh = _mesh_from_arrays(netd, arr, b, level, close)
    if mode == "surface":
        mesh.stats.update(band=res, band_cells=cells.n_occupied if cells else None, bounds_s=t_band,
                          workers=workers, **region_stats)
    mesh.stats.update(tiles=n_tiles, tiles_kept=kept, unpaired_face_keys=unpaired, subdivision_s=t_sub)
    return mesh


def _track_mesh(net: PLGraph, b: np.ndarray, level: float, close: bool, seeds: Any, progress: bool,
                memory_limit: float | None = None) -> tuple[ExactMesh | None, str]:
    """Track mode of :func:`extract_mesh`; ``(None, why)`` where it cannot answer (see
    :func:`track_polygons`)."""
    t0 = time.perf_counter()
    tr, why = track_polygons(net, b, level, close, seeds, progress, memory_limit)
    if tr is None:
        return None, why
    mesh = _mesh_from_tracks(net, tr, b, level)
    mesh.stats.update(tracking_s=time.perf_counter() - t0, **tr["stats"])
    return mesh, ""


def track_polygons(net: PLGraph | PLNetwork, b: np.ndarray, level: float = 0.0, close: bool = False,
                   seeds: Any = None, progress: bool = False, memory_limit: float | None = None
                   ) -> tuple[dict[str, Any] | None, str]:
    """The polygons of :func:`nsr.extraction.tracking.track_surface` grown from ``seeds`` (a grid
    resolution, default 64, or ``(M, 3)`` points; those outside the box ``b`` are dropped),
    or ``(None, why)`` where track mode cannot answer: no seed region crosses the level set,
    a vertex is degenerate (a fourth plane through it), or a walk did not close.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        A 3-D network, in the dtype and on the device to track in.
    b : (3, 2) float ndarray
        The box.
    level : float
        The level of ``g``.
    close : bool
        Also walk the box faces where the output is below the level.
    seeds : int or (M, 3) array_like, optional
        A seed-grid resolution (default 64) or points near the level set.
    progress : bool
        A progress bar.
    memory_limit : float, optional
        Bytes the polygons (and the mesh still to be built from them) may need before a
        ``MemoryError``; default 80% of the available memory.

    Returns
    -------
    tracks : dict or None
        The walked polygons (``key``, ``edges``, ``length``, ``support``, ``vertices``,
        ``normal``, ``n_neurons``, ``stats``), for :func:`weld_tracks`; the polygons' patterns by
        :func:`nsr.extraction.tracking.track_patterns`.
    why : str
        Empty, or why track mode cannot answer.

    Raises
    ------
    ValueError
        For seed points that are not ``(M, 3)``.

    Examples
    --------
    One seed point in the positive octant grows the whole octahedron, a triangle per octant;
    a seed outside the box is dropped:

    >>> import numpy as np
    >>> from nsr.networks import octahedron_network
    >>> box = np.array([[-1.0, 1.0]] * 3)
    >>> tracks, why = track_polygons(octahedron_network(), box, seeds=[[0.9, 0.9, 0.9]])
    >>> why, tracks["stats"]["regions_walked"], tracks["stats"]["failed_walks"]
    ('', 8, 0)
    >>> track_polygons(octahedron_network(), box, seeds=[[2.0, 2.0, 2.0]])
    (None, 'found no seed on the level set')
    """
    from nsr.extraction.tracking import grid_seeds, track_surface

    net = _tracking_network(net)
    bt = torch.as_tensor(b, dtype=net.dtype, device=net.device)
    if seeds is None or isinstance(seeds, (int, np.integer)):
        res = 64 if seeds is None else limits.check_seed_grid(seeds, net.in_dim, net.dtype.itemsize)
        pts = grid_seeds(net, bt, res, level)
    else:
        pts = torch.as_tensor(np.asarray(seeds), dtype=net.dtype, device=net.device)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"seed points must be (M, 3), got shape {tuple(pts.shape)}")
        inside = ((pts >= bt[:, 0]) & (pts <= bt[:, 1])).all(1)
        pts = pts[inside]
    tr = track_surface(net, bt, pts, level=level, close=close, progress=progress, memory_limit=memory_limit)
    if seeds is None or isinstance(seeds, (int, np.integer)):
        tr["stats"]["seed_grid"] = res
    if tr["stats"]["seed_regions"] == 0:
        return None, "found no seed on the level set"
    if tr["stats"]["degenerate_polygons"]:
        near = "a fourth plane through it" if net.dtype == torch.float64 else \
            f"a fourth plane within {str(net.dtype).removeprefix('torch.')} rounding of it; float64 avoids most"
        return None, f"met a degenerate vertex ({near})"
    if tr["stats"]["failed_walks"]:
        return None, f"could not close {tr['stats']['failed_walks']} polygons"
    return tr, ""


def _tracking_network(net: PLGraph | PLNetwork) -> PLGraph | PLNetwork:
    """What :mod:`nsr.extraction.tracking` is handed: a plain ReLU MLP as the :class:`PLNetwork` of ``g``
    (as it has always been), any other graph (skip/residual blocks, other slopes, an encoder) as
    the graph itself."""
    if isinstance(net, PLGraph) and net.is_mlp and net.is_relu and net.encoder is None:
        return net.to_plnetwork(pre_transform=True)
    return net
