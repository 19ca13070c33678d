"""Benchmark: full-complex extraction time and peak memory against network size.

Each configuration runs in a fresh process so that its peak resident memory is its own.
Random networks use PyTorch's default Linear initialization on the box [-1, 1]^D; the
shared bunny networks (``../shared/models``) use [-0.5, 0.5]^3 and are skipped when absent.

    python experiments/bench_complex.py                 # the default grid
    python experiments/bench_complex.py --quick         # a few small configurations
    python experiments/bench_complex.py --device cuda   # on a GPU

Prints a Markdown table (paste it into experiments/RESULTS.md with the machine and date)
and writes ``bench_complex.json`` to ``$NSR_OUT`` (default ``experiments/out/``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

GRID = [
    (2, 16, 2), (2, 32, 4), (2, 64, 4), (2, 32, 8), (2, 64, 8),
    (3, 16, 2), (3, 32, 3), (3, 64, 3), (3, 16, 8), (3, 32, 4),
    (4, 16, 2), (4, 16, 3), (4, 32, 2),
]
QUICK = [(2, 32, 4), (3, 32, 3), (3, 64, 3), (4, 16, 2)]


def _run(spec: dict) -> dict:
    import resource

    import torch

    from nsr.extraction.complex import extract_complex
    from nsr.networks import load_network

    torch.set_num_threads(spec["threads"])
    if spec["kind"] == "random":
        torch.manual_seed(spec["seed"])
        d, w, depth = spec["dim"], spec["width"], spec["depth"]
        layers: list[torch.nn.Module] = []
        for i in range(depth):
            layers += [torch.nn.Linear(d if i == 0 else w, w), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(w, 1))
        bounds = (-1.0, 1.0)
    else:
        net = load_network(spec["path"])
        bounds = (-0.5, 0.5)
    t0 = time.perf_counter()
    cx = extract_complex(net, bounds, dtype=spec["dtype"], device=spec["device"], progress=False)
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {
        **spec,
        "vertices": int(cx.vertices.shape[0]),
        "edges": int(cx.edges.shape[0]),
        "time_s": elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
        "unpaired_face_keys": cx.stats["unpaired_face_keys"],
    }


def run_isolated(spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_run, (spec,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bunny-8x32", action="store_true", help="skip the large shared network")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration; the minimum time is kept")
    args = ap.parse_args()

    base = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "seed": 0}
    specs = [{**base, "kind": "random", "dim": d, "width": w, "depth": k, "name": f"random {d}D {k}x{w}"}
             for d, w, k in (QUICK if args.quick else GRID)]
    models = SHARED / "models"
    if models.is_dir():
        for name in ("bunny_3d_3x16", "bunny_3d_8x32"):
            if name == "bunny_3d_8x32" and (args.quick or args.no_bunny_8x32):
                continue
            specs.append({**base, "kind": "file", "path": str(models / f"{name}.pt"), "name": name})
    else:
        print("../shared/models not found: skipping the bunny networks")

    rows = []
    for spec in specs:
        best = None
        for _ in range(args.repeat):
            r = run_isolated(spec)
            best = r if best is None or r["time_s"] < best["time_s"] else best
        rows.append(best)
        print(f"{best['name']:24s} V={best['vertices']:>10,d} E={best['edges']:>11,d} "
              f"t={best['time_s']:8.2f}s peak={best['peak_rss_mb']:8.0f}MB", flush=True)

    out = Path(os.environ.get("NSR_OUT", ROOT / "experiments" / "out"))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "processor": platform.processor(), "cpus": mp.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "device": args.device, "dtype": args.dtype}
    (out / "bench_complex.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\n{meta}\n")
    print("| network | box | vertices | edges | time (s) | peak memory (MB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        box = f"[-1,1]^{r['dim']}" if r["kind"] == "random" else "[-0.5,0.5]^3"
        mem = r["peak_cuda_mb"] if args.device.startswith("cuda") else r["peak_rss_mb"]
        print(f"| {r['name']} | {box} | {r['vertices']:,} | {r['edges']:,} | {r['time_s']:.2f} | {mem:.0f} |")


if __name__ == "__main__":
    main()
