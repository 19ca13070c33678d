"""What surface mode (the complete default) would cost if its bounds were free (issue 16).

Surface mode cuts the whole box by the first layers, then, before each of the last layers, bounds
the output over every region and drops those that cannot reach the level. This script splits its
time into the two: for each network it runs surface mode once recording which vertices and edges
every region pruning kept, then times, in one process and in alternating order,

- ``surface``: surface mode as it is;
- ``surface, bounds free``: the same cuts with each pruning replaced by the recorded masks (an
  oracle: the skeleton before each pruning is the same, so the masks apply as they are), i.e. the
  cuts alone, the floor of this design whatever the bounds cost; also the part of it spent before
  the first pruning, cutting the whole box;
- ``track``: track mode;
- marching cubes at each ``--resolutions``.

Every exact run must give the recorded run's polygons. For each pruned layer it also prints how
many regions the bounds kept and how many hold a polygon (what perfect bounds would keep). Prints
one table per network with each method's best time and its ratio to marching cubes 256^3, and
writes ``surface_floor.json``.

    python experiments/surface_floor.py --nets shared:bunny_3d_8x32 relu:4x64 --threads 2 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import BOUNDS, DEFAULT_OUT, TrainConfig, make_subject, parse_net, run_meta, warn_if_loaded, write_json

import nsr
import nsr.extraction.pruning as pruning
import nsr.extraction.subdivide as subdivide
from nsr.eval.marching_cubes import marching_cubes
from nsr.extraction.skeleton import _keep
from nsr.pl import as_graph


def record_pruning(net: Any) -> tuple[list[tuple[torch.Tensor, torch.Tensor] | None], Any]:
    """Surface mode once, keeping for every region pruning the vertex and edge masks it applied
    (``None`` where it kept everything, and so applied none); and its mesh."""
    masks: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    prune, keep = subdivide._prune_regions_bounded, pruning._keep

    def recorded_keep(sk: Any, keep_v: torch.Tensor, keep_e: torch.Tensor) -> None:
        masks[-1] = (keep_v.clone(), keep_e.clone())
        keep(sk, keep_v, keep_e)

    def recorded_prune(graph: Any, sk: Any, layer: int, level: float, tol: float = 0.0) -> int:
        masks.append(None)
        return prune(graph, sk, layer, level, tol)

    subdivide._prune_regions_bounded, pruning._keep = recorded_prune, recorded_keep
    try:
        mesh = nsr.extract_mesh(net, BOUNDS, progress=False)
    finally:
        subdivide._prune_regions_bounded, pruning._keep = prune, keep
    return masks, mesh


def regions_needed(net: Any, mesh: Any) -> dict[int, tuple[int, int]]:
    """For each layer ``k`` pruned region by region: (regions kept, regions that hold a polygon).
    The second is the number of distinct sign vectors of the layers before ``k`` among the
    polygons (regions split by a tile boundary count once, so it is a slight undercount): what
    perfect bounds would keep."""
    widths = as_graph(net).widths
    starts = np.cumsum([0, *widths])
    patterns = np.asarray(mesh.polygon_patterns, dtype=bool)
    out = {}
    for key, kept in mesh.stats.items():
        if key.startswith("regions_kept_layer"):
            k = int(key.removeprefix("regions_kept_layer"))
            out[k] = (int(kept), len(np.unique(patterns[:, :starts[k]], axis=0)))
    return out


def surface_with_masks(net: Any, masks: list[tuple[torch.Tensor, torch.Tensor] | None],
                       reached: list[float] | None = None) -> Any:
    """Surface mode with each region pruning replaced by the next recorded masks; appends to
    ``reached`` the seconds from the call to the first pruning (the cuts of the whole box)."""
    queue = list(masks)
    t0 = time.perf_counter()
    original = subdivide._prune_regions_bounded

    def oracle(graph: Any, sk: Any, layer: int, level: float, tol: float = 0.0) -> int:
        if reached is not None and len(queue) == len(masks):
            reached.append(time.perf_counter() - t0)
        mask = queue.pop(0)
        if mask is None:  # this pruning kept everything
            return -1
        keep_v, keep_e = mask
        if len(keep_v) != sk.n_vertices or len(keep_e) != sk.n_edges:
            raise RuntimeError("the skeleton differs from the recorded run's")
        _keep(sk, keep_v, keep_e)
        sk.partial = True
        return -1

    subdivide._prune_regions_bounded = oracle
    try:
        return nsr.extract_mesh(net, BOUNDS, progress=False)
    finally:
        subdivide._prune_regions_bounded = original


def timed_methods(net: Any, masks: list[tuple[torch.Tensor, torch.Tensor] | None], resolutions: list[int],
                  reached: list[float]) -> dict[str, Any]:
    """The calls timed, by name."""
    return {
        "surface": lambda: nsr.extract_mesh(net, BOUNDS, progress=False),
        "surface, bounds free": lambda: surface_with_masks(net, masks, reached),
        "track": lambda: nsr.extract_mesh(net, BOUNDS, mode="track", progress=False),
        **{f"marching cubes {r}^3": (lambda r=r: marching_cubes(net, BOUNDS, r)) for r in resolutions},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", type=parse_net,
                    default=[parse_net("shared:bunny_3d_8x32"), parse_net("relu:4x64")])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="rounds, order alternating")
    ap.add_argument("--resolutions", nargs="*", type=int, default=[128, 256])
    ap.add_argument("--train-seconds", type=float, default=150.0, help="for relu networks not cached yet")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of surface_floor.json ($NSR_OUT)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = run_meta(args)
    warn_if_loaded(meta)
    warnings.simplefilter("ignore")
    cfg = TrainConfig(seconds=args.train_seconds)  # 150 s: the cached 4x64 of the earlier tables
    results: dict[str, Any] = {}
    for spec in args.nets:
        subject = make_subject(spec, cfg, DEFAULT_OUT / "nets")
        if subject is None:
            continue
        net = subject.net
        nsr.extract_mesh(net, BOUNDS, progress=False)  # warm-up
        masks, recorded = record_pruning(net)
        n_polygons = int(recorded.stats["n_polygons"])
        needed = regions_needed(net, recorded)
        del recorded
        reached: list[float] = []
        methods = timed_methods(net, masks, args.resolutions, reached)
        times: dict[str, list[float]] = {k: [] for k in methods}
        for rnd in range(args.repeat):
            order = list(methods) if rnd % 2 == 0 else list(methods)[::-1]
            for name in order:
                gc.collect()
                t0 = time.perf_counter()
                out = methods[name]()
                times[name].append(time.perf_counter() - t0)
                if not name.startswith("marching") and int(out.stats["n_polygons"]) != n_polygons:
                    raise RuntimeError(f"{name}: {out.stats['n_polygons']} polygons, recorded {n_polygons}")
                del out
                print(f"[{spec.label}] round {rnd + 1} {name}: {times[name][-1]:.2f} s", flush=True)
        ref = min(times["marching cubes 256^3"]) if "marching cubes 256^3" in times else None
        print(f"\n{spec.label}: {n_polygons:,} polygons, {len(masks)} region prunings, best of {args.repeat}\n")
        print("| method | best (s) | ÷ MC 256³ |\n| --- | ---: | ---: |")
        for name, ts in times.items():
            ratio = f"{min(ts) / ref:.2f}" if ref else "-"
            print(f"| {name} | {min(ts):.2f} | {ratio} |")
        if reached:
            print(f"| (bounds free: the whole box's cuts, before the first pruning) | {min(reached):.2f} | "
                  f"{min(reached) / ref:.2f} |" if ref else "")
        for k, (kept, held) in needed.items():
            print(f"layer {k}: {kept:,} regions kept by the bounds, {held:,} hold a polygon")
        results[spec.label] = {"regions_kept_and_needed": needed, "polygons": n_polygons, "times": times,
                               "whole_box_cuts_s": reached}
    write_json(args.out / "surface_floor.json", {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
