"""Exact extraction of a trained simplex-grid network against marching cubes, in ONE process (issue 14).

The network is ``experiments/grid_net.py``'s recommended CPU grid (5 nested levels of 4 features,
resolutions 6..96, 2^15-row tables, raw coordinates, MLP 16x2) trained on the shared bunny
(cached under ``experiments/out/``; trained first if absent, which needs ``../shared``). One after
another, in one process: the exact surface in track mode (float64; walks only the polygons the
surface crosses, so its cost follows the surface, not the ~1,900-plane arrangement that surface
mode must build in every tile the bounds cannot drop), then marching cubes at each
``--resolutions`` (float32). Per method: time, polygons (marching cubes: triangles), max and mean
|f| at the vertices measured in float64 on the module itself. A method slower than
``--max-seconds`` is stopped and recorded as such (SIGALRM; CPU-bound torch code is interrupted
between operations).

    python experiments/bench_grid_extraction.py --seconds 90 --resolutions 128 256
    python experiments/bench_grid_extraction.py --net outputs/train/<run>/checkpoints/last.ckpt \\
        --seeds 64 192 --surface --resolutions 256 512

``--net`` takes any network file nsr reads (a checkpoint of ``experiment=grid_cpu``, a state dict)
instead of the cached one; ``--seeds`` runs track mode once per seed-grid resolution (a component no seed
reaches is missed, so the polygon counts differ); ``--surface`` adds the complete mode (surface), last.

Prints a Markdown table and writes ``bench_grid_extraction.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))


class _Timeout(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise _Timeout


def _abs_f(module: torch.nn.Module, x: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        f = module.double()(torch.as_tensor(x, dtype=torch.float64)).abs()
    module.float()
    return float(f.max()), float(f.mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90.0, help="training time of the cached grid network")
    ap.add_argument("--resolutions", type=int, nargs="*", default=[128, 256])
    ap.add_argument("--max-seconds", type=int, default=900)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--net", type=Path, default=None, help="a network file (checkpoint or state dict)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="track mode's seed grids, one run each; 0: extract_mesh's default (64)")
    ap.add_argument("--surface", action="store_true", help="also the complete (surface) mode, after the others")
    ap.add_argument("--surface-first", action="store_true",
                    help="with --surface: run it first (A/B in both orders: what ran before moves a timing)")
    ap.add_argument("--tiles", type=int, nargs="+", default=[0],
                    help="surface mode's tiles per axis, one run each; 0: extract_mesh's default (default_tiles)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("NSR_OUT", ROOT / "experiments" / "out")))
    args = ap.parse_args(argv)

    import grid_net

    from nsr.eval.marching_cubes import marching_cubes
    from nsr.extraction.surface import extract_mesh

    torch.set_num_threads(args.threads)
    if args.net is not None:
        from nsr.networks import load_network

        net = load_network(args.net).eval()
    else:
        path = grid_net.default_path(args.seconds)
        if not path.is_file():
            if not (ROOT.parent / "shared" / "meshes").is_dir():
                print("../shared/meshes is absent: nothing to train on; skipping")
                return 0
            grid_net.train_grid_net(args.seconds)
        net = grid_net.load_grid_net(path)
    bounds = np.array([[-0.5, 0.5]] * 3)
    signal.signal(signal.SIGALRM, _alarm)
    rows = []
    methods: list[tuple[str, object]] = [
        (f"exact, track mode (seeds {s}^3)" if s else "exact, track mode (default seeds)", ("track", s))
        for s in (s or None for s in args.seeds)]
    methods += [(f"marching cubes {r}^3", r) for r in args.resolutions]
    if args.surface:
        surface = [(f"exact, surface mode (complete, {t}^3 tiles)" if t else "exact, surface mode (complete)",
                    ("surface", t or None)) for t in args.tiles]
        methods = surface + methods if args.surface_first else methods + surface
    for name, res in methods:
        signal.alarm(args.max_seconds)
        t0 = time.perf_counter()
        try:
            if isinstance(res, tuple):
                mode, opt = res  # track: its seed grid; surface: its tiles (None: the defaults)
                mesh = extract_mesh(net, bounds, mode=mode, progress=False,
                                    **({"seeds": opt} if mode == "track" else {"tiles": opt}))
                verts, n_poly = mesh.vertices, len(mesh.polygons)
                if mode == "track":
                    name = name.replace("default seeds", f"default seeds, {mesh.stats.get('seed_grid')}^3")
            else:
                mc = marching_cubes(net, bounds, resolution=res)
                verts, n_poly = np.asarray(mc.vertices), len(mc.faces)
            dt = time.perf_counter() - t0
            signal.alarm(0)
            fmax, fmean = _abs_f(net, verts)
            rows.append({"method": name, "status": "ok", "time_s": dt, "polygons": n_poly,
                         "vertices": len(verts), "max_abs_f": fmax, "mean_abs_f": fmean})
        except _Timeout:
            rows.append({"method": name, "status": f"stopped at {args.max_seconds} s"})
        print(rows[-1], flush=True)
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    print(head)
    print("| method | status | time (s) | polygons | max \\|f\\| | mean \\|f\\| |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r["status"] == "ok":
            print(f"| {r['method']} | ok | {r['time_s']:.2f} | {r['polygons']:,} | {r['max_abs_f']:.1e} | "
                  f"{r['mean_abs_f']:.1e} |")
        else:
            print(f"| {r['method']} | {r['status']} | - | - | - | - |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_grid_extraction.json").write_text(json.dumps({"header": head, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
