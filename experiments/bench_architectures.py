"""Benchmark (issue 13): a DeepSDF-style skip network's exact surface against marching cubes.

Trains (once, then cached) an 8-layer :class:`nsr.pl.SkipMLP` (the input concatenated back in
before hidden layer 4; width 64 by default, up to 256 with ``--nets skip:8x256``) on the shared
Stanford bunny with nsr's data sampling and loss (a plain torch loop: ``ImplicitShapeModule``
takes only a ``ReLUMLP`` on this branch; see ``experiments/_bench.py``), then in ONE process,
one call after another: nsr's exact surface in surface and track modes and marching cubes at
256^3 and 512^3 of the same network. Per call: time, peak memory above the process's memory
before the call (kernel high-water mark VmHWM, reset before each call), polygons (marching
cubes: triangles), polygons per second, max and mean |f| at the vertices (the module itself
evaluated in float64). Where nsr cannot read the skip network yet (graph support lands in
``nsr.extraction.surface`` separately) the exact rows say ``unsupported`` with nsr's message, and marching
cubes evaluates the module's own forward.

    python experiments/bench_architectures.py                         # skip 8x64, 240 s of training
    python experiments/bench_architectures.py --nets skip:8x128 relu:8x128 --train-seconds 300
    python experiments/bench_architectures.py --repeat 3 --threads 2   # a quiet machine, for RESULTS.md

Prints the networks, then a Markdown table (``÷ MC 256³``: time over marching cubes 256^3 of the
same network in the same run), and writes ``bench_architectures.json`` to ``--out`` ($NSR_OUT,
default ``experiments/out/``). Skips cleanly (exit 0) when ../shared is absent. Timings taken
while other jobs run are not results: the script warns when the load average is high.
"""

from __future__ import annotations

import argparse
import sys

from _bench import add_common_arguments, parse_net, run_benchmark


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", type=parse_net, default=[parse_net("skip:8x64")],
                    help="relu:DxW, skip:DxW (depth x width), shared:NAME or file:PATH[:LABEL] (default: skip:8x64)")
    add_common_arguments(ap, resolutions=[256, 512], modes=["surface", "track"])
    return run_benchmark(ap.parse_args(argv), "bench_architectures")


if __name__ == "__main__":
    sys.exit(main())
