"""Regions' gradients two ways, in ONE process: ``PLGraph.local_gradients`` (reverse mode with each
region's slopes, one row per region through each block) against the gradient rows of
``PLGraph.region_maps`` (the former method: D + 1 rows per region through each block).

Surface mode orients every polygon of its mesh by its region's gradient, so on a wide network
this is a step of every complete extraction. The regions are those of random points in the box
[-1, 1]^3; both answers must agree to 1e-12 (the script stops otherwise).

    python experiments/bench_local_gradients.py --nets file:experiments/out/nets/NET.pt:label --regions 300000

Networks as in ``_bench.py``. Best of ``--rounds``, alternating the two methods; one torch thread
unless ``--threads``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _bench import TrainConfig, make_subject, parse_net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", type=parse_net, required=True)
    ap.add_argument("--regions", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-seconds", type=float, default=150.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from _bench import DEFAULT_OUT

    from nsr.pl.graph import as_graph

    print("| network | regions | region_maps (s) | local_gradients (s) | ratio | max difference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    cfg = TrainConfig(seconds=args.train_seconds, threads=args.threads)
    for spec in args.nets:
        subject = make_subject(spec, cfg, DEFAULT_OUT / "nets")
        if subject is None:
            continue
        graph = as_graph(subject.net).to(dtype=torch.float64)
        x = torch.rand(args.regions, graph.in_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        patterns = graph.patterns(x * 2 - 1)
        best = {"maps": float("inf"), "reverse": float("inf")}
        out = {}
        for _ in range(args.rounds):
            for name in best:
                t = time.perf_counter()
                if name == "maps":
                    out[name] = graph.region_maps(patterns)[-1][0][:, 0]
                else:
                    out[name] = graph.local_gradients(patterns)
                best[name] = min(best[name], time.perf_counter() - t)
        diff = float((out["maps"] - out["reverse"]).abs().max())
        if diff > 1e-12:
            raise SystemExit(f"{subject.label}: the two gradients differ by {diff:.2e}")
        print(f"| {subject.label} | {args.regions:,} | {best['maps']:.2f} | {best['reverse']:.2f} | "
              f"{best['maps'] / best['reverse']:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
