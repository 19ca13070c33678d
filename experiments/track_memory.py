"""Track mode's memory guard against the memory it really takes (issue 16).

Each network is tracked in a fresh process (``ru_maxrss`` is a per-process peak): the peak
resident set over the peak before the extraction, against ``stats["memory_estimate_mb"]``, the
figure the guard compares with ``memory_limit`` (:func:`nsr.extraction.memory._check_track_memory`).
The guard is safe where the estimate is at least the measured peak.

Usage::

    python experiments/track_memory.py                      # the cached networks that exist
    python experiments/track_memory.py --nets shared:bunny_3d_8x32 grid:experiments/out/grid_stanford-bunny_90s.pt

Networks: ``shared:NAME`` (``../shared/models``), ``file:PATH`` (``nsr.networks.load_network``),
``cache:PATH`` (``experiments/out/nets``, a plain or skip MLP cached by ``_bench.py``),
``grid:PATH`` (a grid network cached by ``grid_net.py``). Missing files are skipped.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NETS = ROOT / "experiments" / "out" / "nets"
DEFAULT_NETS = [
    "shared:bunny_3d_8x32",
    f"cache:{NETS / 'stanford-bunny_relu_4x64_150s_323e189b.pt'}",
    f"cache:{NETS / 'stanford-bunny_relu_4x128_150s_17c38b57.pt'}",
    f"cache:{NETS / 'stanford-bunny_skip_4x128_150s_56c2c4b5.pt'}",
    f"cache:{NETS / 'stanford-bunny_relu_4x256_150s_6e2b8251.pt'}",
    f"grid:{ROOT / 'experiments' / 'out' / 'grid_stanford-bunny_90s.pt'}",
]


def _path(spec: str) -> Path:
    kind, _, rest = spec.partition(":")
    return SHARED / "models" / f"{rest}.pt" if kind == "shared" else Path(rest)


def _load(spec: str):  # noqa: ANN202 - a module or a PLNetwork
    import torch

    kind, _, rest = spec.partition(":")
    if kind in ("shared", "file"):
        from nsr.networks import load_network

        return load_network(_path(spec))
    if kind == "cache":
        sys.path.insert(0, str(ROOT / "experiments"))
        from _bench import build_module

        blob = torch.load(rest, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        net = build_module(meta["kind"], meta["width"], meta["depth"])
        net.load_state_dict(blob["state_dict"])
        return net.eval()
    if kind == "grid":
        sys.path.insert(0, str(ROOT / "experiments"))
        from grid_net import load_grid_net

        return load_grid_net(Path(rest))
    raise SystemExit(f"unknown network spec {spec!r}")


def child(spec: str, half: float) -> dict:
    """Track one network in this process; the peak memory it added and the guard's estimate."""
    import torch

    from nsr import extract_mesh

    torch.set_num_threads(1)
    net = _load(spec)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    mesh = extract_mesh(net, (-half, half), mode="track", progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    est = mesh.stats["memory_estimate_mb"]
    return {"net": spec.split("/")[-1], "polygons": len(mesh.polygons), "seconds": round(seconds, 1),
            "peak_mb": round(peak, 1), "estimate_mb": round(est, 1), "estimate_over_peak": round(est / peak, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=DEFAULT_NETS)
    ap.add_argument("--half", type=float, default=0.5, help="half side of the box (default 0.5)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.half)))
        return 0
    rows = []
    for spec in args.nets:
        if not _path(spec).is_file():
            print(f"[{spec}] skipped: {_path(spec)} not found", flush=True)
            continue
        out = subprocess.run([sys.executable, __file__, "--child", spec, "--half", str(args.half)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print("\n| network | polygons | track s | peak over start (MB) | guard's estimate (MB) | estimate / peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['net']} | {r['polygons']:,} | {r['seconds']} | {r['peak_mb']:,} | {r['estimate_mb']:,} | "
              f"{r['estimate_over_peak']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
