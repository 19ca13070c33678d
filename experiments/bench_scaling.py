"""Benchmark (issue 16): how the exact extraction scales with the network, against marching cubes.

Networks of growing width and depth trained on the shared Stanford bunny (once, then cached:
``--train-seconds`` of wall time each, nsr's data sampling and loss; see ``experiments/_bench.py``):
plain ReLU MLPs 4x64, 4x128, 4x256, 8x256 and DeepSDF-style skip versions of the same sizes,
plus the shared bunny networks (``../shared/models``: 3x16, 8x32) when present. For each
network, in ONE process, one call after another: the exact surface in each ``--modes``
(surface: the complete default; track; complex, only where the network has at most
``--complex-max-neurons`` neurons, 256 by default: the 3x16 and 8x32 bunny networks) and
marching cubes at each ``--resolutions`` of the same network. Per call: polygons (marching
cubes: triangles), time, polygons per second, peak memory above the process's memory
before the call (kernel high-water mark VmHWM, reset before each call), max and mean |f| at the
vertices in float64. A call slower than ``--max-seconds`` is stopped and recorded as a timeout;
methods nsr refuses for a network (skip networks before the graph support lands) are recorded as
unsupported. ``--repeat N`` goes N rounds over the methods and keeps each one's best time.

    python experiments/bench_scaling.py                                # everything (hours: trains 8 nets)
    python experiments/bench_scaling.py --nets relu:4x64 shared:bunny_3d_8x32 --repeat 3
    python experiments/bench_scaling.py --modes surface track --repeat 2    # no complex mode

Prints the networks and a Markdown table (``÷ MC 256³``: time over marching cubes 256^3 of the
same network in the same run), and writes ``bench_scaling.json`` to ``--out`` ($NSR_OUT, default
``experiments/out/``). Networks whose files are absent (../shared missing) are skipped cleanly.
Timings taken while other jobs run are not results: the script warns when the load average is high.
"""

from __future__ import annotations

import argparse
import sys

from _bench import add_common_arguments, parse_net, run_benchmark

SIZES = ["4x64", "4x128", "4x256", "8x256"]
DEFAULT_NETS = ["shared:bunny_3d_3x16", "shared:bunny_3d_8x32", *(f"relu:{s}" for s in SIZES),
                *(f"skip:{s}" for s in SIZES)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", type=parse_net, default=[parse_net(n) for n in DEFAULT_NETS],
                    help="relu:DxW, skip:DxW (depth x width), shared:NAME or file:PATH[:LABEL] "
                    f"(default: {' '.join(DEFAULT_NETS)})")
    ap.add_argument("--complex-max-neurons", type=int, default=256,
                    help="complex mode only on networks with at most this many neurons (its cost explodes)")
    add_common_arguments(ap, resolutions=[256, 512], modes=["surface", "track", "complex"])
    args = ap.parse_args(argv)
    return run_benchmark(args, "bench_scaling", complex_max_neurons=args.complex_max_neurons)


if __name__ == "__main__":
    sys.exit(main())
