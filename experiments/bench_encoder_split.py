"""Exact surface extraction of a trained simplex-grid network: each tile cut only by the encoder planes that
cross it (``nsr.extraction.encoder_split``) against the loop that cuts every plane through every tile, in one
process on the same network (issue 14).

Usage::

    python experiments/bench_encoder_split.py                              # sub-box of side 0.25 on the surface
    python experiments/bench_encoder_split.py --side 0.25 --tiles 4 --old-tiles 4 2 --counts

The network is :mod:`experiments.grid_net`'s (the recommended grid trained on the shared bunny, cached under
``experiments/out/``). The box is ``--side`` wide around a point of the level set (the whole training box for
``--side 1``). Per configuration ("new": planes culled per tile, encoder cells pruned before layer 0, tiles in
batches; "before": every plane through every tile, no cell pruning, one batch): tiles kept, (tile, plane) pairs cut,
vertices after the encoder split, encoder cells kept, time, polygons, max |f| (float64), and whether the mesh is
bitwise the new path's at the same tiling; then marching cubes 256^3 of the same network over the same box
(``--counts``: also the whole box's planes, tiles and pairs). Absolute times depend on the machine's load: compare
the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from grid_net import default_path, load_grid_net, train_grid_net  # noqa: E402

import nsr.extraction.encoder_split as encoder_split  # noqa: E402
import nsr.extraction.subdivide as subdivide_module  # noqa: E402
from nsr.eval.marching_cubes import marching_cubes  # noqa: E402
from nsr.extraction.surface import extract_mesh  # noqa: E402
from nsr.pl import trace  # noqa: E402


def surface_point(net: torch.nn.Module, seed: int) -> np.ndarray:
    """A point near the level set: the sign change closest to the box centre along random segments."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(4096, 3, generator=g, dtype=torch.float64) * 0.8 - 0.4
    b = torch.rand(4096, 3, generator=g, dtype=torch.float64) * 0.8 - 0.4
    with torch.no_grad():
        fa, fb = net(a), net(b)
    cross = torch.nonzero(fa * fb < 0).squeeze(1)
    t = (fa[cross] / (fa[cross] - fb[cross]))[:, None]
    p = a[cross] + t * (b[cross] - a[cross])
    return p[p.norm(dim=1).argmin()].numpy()


def run(graph: object, box: np.ndarray, tiles: int, cull: bool) -> dict[str, object]:
    """One exact extraction (surface mode, float64): the new path (planes culled per tile, encoder cells
    pruned before layer 0, tiles in batches) or the code before it (every plane through every tile, no cell
    pruning, one batch)."""
    subdivide_module.CULL_ENCODER_PLANES = cull
    subdivide_module.PRUNE_ENCODER_CELLS = cull
    encoder_split.ENCODER_BATCH_VERTICES = 2**20 if cull else 2**62
    t0 = time.perf_counter()
    mesh = extract_mesh(graph, box, tiles=tiles, dtype=torch.float64, progress=False)
    secs = time.perf_counter() - t0
    s = mesh.stats
    return {"path": "new" if cull else "before", "tiles": tiles, "batches": s.get("encoder_batches", 1),
            "cells_kept": s.get("regions_kept_encoder"), "tiles_kept": s["tiles_kept"],
            "pairs": s.get("encoder_pairs"), "encoder_vertices": s.get("encoder_vertices"), "time_s": round(secs, 2),
            "polygons": s["n_polygons"], "max_abs_f": s["max_abs_f"], "mesh": mesh}


def same(a: object, b: object) -> bool:
    """Identical polygons: the same vertex array and the same index lists."""
    return bool(np.array_equal(a.vertices, b.vertices)  # type: ignore[attr-defined]
                and [p.tolist() for p in a.polygons] == [p.tolist() for p in b.polygons])  # type: ignore[attr-defined]


def full_box_counts(graph: object) -> None:
    """Planes, tiles kept by the output bounds, crossing (tile, plane) pairs and batches over the whole training
    box at the default tiling: what a full extraction would have to split (counted, not extracted)."""
    from nsr.extraction.encoder_split import tile_batches, tile_slots
    from nsr.extraction.pruning import may_reach, output_bounds
    from nsr.extraction.subdivide import encoder_facets
    from nsr.extraction.tiles import default_tiles, tile_grid

    box = np.array([[-0.5, 0.5]] * 3)
    bt = torch.as_tensor(box)
    facets = encoder_facets(graph, bt[:, 0], bt[:, 1])  # type: ignore[arg-type]
    for tiles in sorted({default_tiles(graph), 32}):  # type: ignore[arg-type]
        tlo, thi, _ = tile_grid(box, tiles, torch.float64, torch.device("cpu"))
        olo, ohi = output_bounds(graph, tlo, thi)  # type: ignore[arg-type]
        sel = may_reach(olo, ohi, 0.0, 0.0)
        slots, _, pairs = tile_slots(tlo[sel], thi[sel], facets, 1 + (6 + len(facets[1])) // 64, 6)
        batches = tile_batches(tlo[sel], thi[sel], facets)
        print(f"whole box, {tiles}^3 tiles: {len(facets[1])} planes, {int(sel.sum())} tiles kept by bounds, "
              f"{int(pairs)} crossing pairs (all planes: {int(sel.sum()) * len(facets[1])}), {slots.shape[1]} slots, "
              f"{len(batches)} batches", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90.0, help="training time of the cached network")
    ap.add_argument("--side", type=float, default=0.25, help="box side (1: the whole training box)")
    ap.add_argument("--tiles", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--old-tiles", type=int, nargs="*", default=[2], help="tiles of the runs of the code before")
    ap.add_argument("--no-old", action="store_true", help="skip the all-planes run")
    ap.add_argument("--mc", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--counts", action="store_true", help="also count planes, tiles and pairs over the whole box")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    path = default_path(a.seconds)
    if not path.is_file():
        train_grid_net(a.seconds)
    net = load_grid_net(path).double()
    graph = trace(net)
    if a.side >= 1.0:
        box = np.array([[-0.5, 0.5]] * 3)
    else:
        c = np.clip(surface_point(net, a.seed), -0.5 + a.side / 2, 0.5 - a.side / 2)
        box = np.stack([c - a.side / 2, c + a.side / 2], 1)
    bt = torch.as_tensor(box)
    n_planes = len(graph.encoder.planes(bt[:, 0], bt[:, 1])[1])
    print(f"box {box.tolist()}, encoder planes {n_planes}")
    if a.counts:
        full_box_counts(graph)
    rows = []
    configs = [(t, True) for t in a.tiles] + ([] if a.no_old else [(t, False) for t in a.old_tiles])
    for tiles, cull in configs:
        r = run(graph, box, tiles, cull)
        twin = next((q for q in rows if q["tiles"] == tiles), None)  # the same tiling: bitwise the same mesh
        r["same_as_new"] = same(r["mesh"], twin["mesh"]) if twin else None
        rows.append(r)
        print({k: v for k, v in r.items() if k != "mesh"}, flush=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        mc = marching_cubes(lambda x: net(x.double()), box, a.mc)
    print(f"marching cubes {a.mc}^3: {time.perf_counter() - t0:.2f} s, {len(mc.faces)} triangles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
