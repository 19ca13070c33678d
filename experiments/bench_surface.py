"""Benchmark: exact surface extraction versus marching cubes, side by side in one run.

For each network: nsr's exact surface (``mode="track"``, grown from grid seeds, and
``mode="surface"``, complete by pruning; float64) and nsr's marching-cubes baseline
(scikit-image Lewiner on a chunked grid evaluation, float32, network evaluation included)
at 128^3 and 256^3. Every method runs in a fresh process so that its peak
resident memory is its own; the ratio column divides by the exact extraction's time in
the same run (the first exact mode listed, track by default). Each exact row also counts
the polygons, so the modes can be compared: track mode is only complete where its seeds
reach every component.

    python experiments/bench_surface.py                       # shared bunny networks
    python experiments/bench_surface.py --nets run/checkpoints/last.ckpt:4x128 ...
    python experiments/bench_surface.py --tiles 8 12 16        # compare tilings
    python experiments/bench_surface.py --workers 1 2          # tiles in 1 and 2 processes
    python experiments/bench_surface.py --modes track           # track mode only

Prints a Markdown table and writes ``bench_surface.json`` to ``$NSR_OUT`` (default
``experiments/out/``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _abs_f(net, vertices) -> tuple[float, float]:
    import numpy as np
    import torch

    if len(vertices) == 0:
        return float("nan"), float("nan")
    n64 = net.to(dtype=torch.float64, device="cpu")
    with torch.no_grad():
        f = n64(torch.as_tensor(np.asarray(vertices, dtype=np.float64))).abs()
    return float(f.mean()), float(f.max())


def _run(spec: dict) -> dict:
    import resource

    import torch

    from nsr.networks import load_network

    torch.set_num_threads(spec["threads"])
    net = load_network(spec["path"])
    bounds = spec["bounds"]
    t0 = time.perf_counter()
    if spec["method"] == "exact":
        from nsr.extraction.surface import extract_mesh

        mode = spec.get("mode", "surface")
        kw = {"tiles": spec.get("tiles"), "workers": spec.get("workers", 1)} if mode == "surface" else {}
        mesh = extract_mesh(net, bounds, mode=mode, dtype=spec.get("dtype", "float64"), device=spec["device"],
                            progress=False, **kw)
        elapsed = time.perf_counter() - t0
        verts, n_faces = mesh.vertices, len(mesh.triangles)
        extra = {"polygons": len(mesh.polygons), "tiles_kept": mesh.stats.get("tiles_kept"),
                 "tiles": mesh.stats.get("tiles"), "watertight": mesh.stats.get("watertight"),
                 "mode_used": mesh.stats["mode"], "seed_regions": mesh.stats.get("seed_regions")}
    else:
        from nsr.eval.marching_cubes import marching_cubes

        tm = marching_cubes(net, bounds, spec["resolution"], device=spec["device"])
        elapsed = time.perf_counter() - t0
        verts, n_faces = tm.vertices, len(tm.faces)
        extra = {"watertight": bool(tm.is_watertight)}
    mean_f, max_f = _abs_f(net, verts)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = spec.get("workers", 1)
    if workers > 1:  # the largest worker process, counted once per worker (an upper bound)
        peak_kb += workers * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {**spec, **extra, "time_s": elapsed, "vertices": len(verts), "faces": n_faces,
            "mean_abs_f": mean_f, "max_abs_f": max_f, "peak_rss_mb": peak_kb / 1024}


def run_isolated(spec: dict) -> dict:
    # a fresh non-daemonic process per method, so that it may spawn tile workers
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_run, spec).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", default=[], help="extra network files, optionally PATH:LABEL")
    ap.add_argument("--bounds", type=float, nargs=2, default=(-0.5, 0.5))
    ap.add_argument("--resolutions", type=int, nargs="*", default=[128, 256])
    ap.add_argument("--modes", nargs="*", default=["track", "surface"], choices=["track", "surface"])
    ap.add_argument("--tiles", type=int, nargs="*", default=[None], help="surface mode: tiles per axis")
    ap.add_argument("--workers", type=int, nargs="*", default=[1],
                    help="exact surface: worker processes (one torch thread each when > 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="exact extraction's dtype")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-8x32", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="fresh-process runs per method, the fastest kept (a VM's first touch of memory is noisy)")
    args = ap.parse_args()

    nets: list[tuple[str, str]] = []
    if (SHARED / "models").is_dir():
        for name in ("bunny_3d_3x16", "bunny_3d_8x32"):
            if not (name == "bunny_3d_8x32" and args.skip_8x32):
                nets.append((str(SHARED / "models" / f"{name}.pt"), name))
    else:
        print("../shared/models not found: only --nets are measured")
    for item in args.nets:
        path, _, label = item.partition(":")
        nets.append((path, label or Path(path).stem))

    base = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "bounds": list(args.bounds)}
    rows = []
    for path, label in nets:
        specs = [{**base, "path": path, "net": label, "method": "exact", "mode": m, "tiles": t, "workers": w}
                 for m in args.modes for t in (args.tiles if m == "surface" else [None])
                 for w in (args.workers if m == "surface" else [1])]
        specs += [{**base, "path": path, "net": label, "method": "marching_cubes", "resolution": r}
                  for r in args.resolutions]
        for spec in specs:
            runs = [run_isolated(spec) for _ in range(args.repeat)]
            r = min(runs, key=lambda q: q["time_s"])
            r["times_s"] = [q["time_s"] for q in runs]
            rows.append(r)
            what = (f"exact {r['mode']} tiles={r.get('tiles')} w={r.get('workers')}" if r["method"] == "exact"
                    else f"MC {r['resolution']}^3")
            print(f"{label:16s} {what:20s} t={r['time_s']:8.2f}s peak={r['peak_rss_mb']:7.0f}MB "
                  f"V={r['vertices']:>9,d} F={r['faces']:>9,d} max|f|={r['max_abs_f']:.2e}", flush=True)

    out = Path(os.environ.get("NSR_OUT", ROOT / "experiments" / "out"))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": mp.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "device": args.device, "dtype": args.dtype, "threads": args.threads}
    (out / "bench_surface.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(f"\n{meta}\n")
    print("| network | method | time (s) | time / exact | peak memory (MB) | vertices | faces "
          "| mean \\|f\\| | max \\|f\\| | watertight |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label in dict.fromkeys(r["net"] for r in rows):
        group = [r for r in rows if r["net"] == label]
        exact_t = [r["time_s"] for r in group if r["method"] == "exact"][0]  # the first exact row
        for r in group:
            if r["method"] == "exact":
                workers = f", {r['workers']} workers" if r.get("workers", 1) > 1 else ""
                if r["mode_used"] == "track":
                    what = f"exact, track ({r['seed_regions']:,} seed regions, {r['polygons']:,} polygons)"
                else:
                    fell = f", fell back to {r['mode_used']}" if r["mode_used"] != r["mode"] else ""
                    what = (f"exact, {r['mode']} mode ({r['tiles_kept']}/{r['tiles']} tiles, "
                            f"{r['polygons']:,} polygons{workers}{fell})")
            else:
                what = f"marching cubes {r['resolution']}^3"
            print(f"| {label} | {what} | {r['time_s']:.2f} | {r['time_s'] / exact_t:.2f} | {r['peak_rss_mb']:.0f} "
                  f"| {r['vertices']:,} | {r['faces']:,} | {r['mean_abs_f']:.1e} | {r['max_abs_f']:.1e} "
                  f"| {r['watertight']} |")


if __name__ == "__main__":
    main()
