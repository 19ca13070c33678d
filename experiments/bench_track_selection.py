"""Track mode's choice of a walk's nearest planes: selection (today's ``_nearest``) against the
sorted ``torch.topk`` it replaced (issue 16), in one process, the two alternating which runs first.

    python experiments/bench_track_selection.py --threads 1 --rounds 3 \
        --nets ../shared/models/bunny_3d_8x32.pt experiments/out/nets/<trained>.pt

Each round extracts every network's surface in track mode over (-0.5, 0.5)^3 with both versions
and prints the times, the polygon count and the sum of |vertex coordinates| (the two must agree);
the last line per network is the ratio of the best times. Pin the process (``taskset``) for one
thread, and run nothing beside it. Networks whose files are absent are skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nsr  # noqa: E402
from nsr.extract import resolve_network  # noqa: E402
from nsr.extraction import tracking  # noqa: E402


def sorted_topk(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection before db7ff43: a sorted ``topk`` of ``k + 1``."""
    near_d, sel = torch.topk(dist, k + 1, dim=1, largest=False, sorted=True)
    return torch.sort(sel[:, :k], 1)[0], near_d[:, k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", required=True, help="network files (as nsr-extract reads them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    versions = {"sorted topk": sorted_topk, "selection": tracking._nearest}
    for spec in args.nets:
        if not Path(spec).exists():
            print(f"{spec}: absent, skipped")
            continue
        net = resolve_network(spec)[0]
        nsr.extract_mesh(net, (-0.5, 0.5), mode="track", progress=False)  # warm the process
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
                tracking._nearest = versions[name]
                t0 = time.perf_counter()
                mesh = nsr.extract_mesh(net, (-0.5, 0.5), mode="track", progress=False)
                dt = time.perf_counter() - t0
                best[name] = min(best.get(name, float("inf")), dt)
                print(f"{Path(spec).name} round {r} {name}: {dt:.2f} s, {mesh.stats['n_polygons']:,} polygons, "
                      f"sum |x| {abs(mesh.vertices).sum():.10f}", flush=True)
        tracking._nearest = versions["selection"]
        print(f"{Path(spec).name}: best {best['sorted topk']:.2f} s / {best['selection']:.2f} s = "
              f"{best['sorted topk'] / best['selection']:.3f}x, {args.threads} thread(s)", flush=True)


if __name__ == "__main__":
    main()
