"""Track mode before and after a change of its walks, in ONE process (issues 14 and 16).

The baseline is track mode's modules (``nsr/extraction/tracking.py`` and
``nsr/extraction/encoder_tracking.py``) at a git ref (``--base``), read with ``git show`` and loaded
under other module names; for a baseline run they stand in for today's modules in ``sys.modules``
(``extract_mesh`` imports them when called), and every other module is shared. Each round runs, on
each network, the baseline track mode and today's track mode (even rounds the baseline first, odd
rounds today's: the first extraction in a process pays for warming it, so one round favours the
second run; read the best of at least two rounds) and marching cubes 256^3
(``nsr.eval.marching_cubes``) one after another, so that a machine shared with other jobs slows
them alike; each row carries the load average read just before it and the process's CPU time. Both
track runs must give the same polygons (count, region patterns) and the same vertex set (bitwise):
the script stops otherwise.

    python experiments/bench_track_batches.py --nets shared:bunny_3d_8x32 relu:4x64 grid --rounds 2 --base fd978e5

Networks as in ``_bench.py``, plus ``grid``: the trained simplex-grid network of
``experiments/grid_net.py`` (trained there once, 90 s, and cached). Writes
``bench_track_batches.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _bench import BOUNDS, DEFAULT_OUT, ROOT, PeakMemory, TrainConfig, make_subject, parse_net, write_json
from bench_pruning import same_polygons

NAMES = {"nsr.extraction.tracking": "nsr/extraction/tracking.py",
         "nsr.extraction.encoder_tracking": "nsr/extraction/encoder_tracking.py"}


def load_baseline(ref: str) -> dict[str, types.ModuleType]:
    """Track mode's modules at ``ref``, importing each other (and today's everything else)."""
    def show(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{path}"], capture_output=True, text=True,
                              check=True).stdout

    out = {}
    for name, path in NAMES.items():
        src = show(path)
        for other in NAMES:
            src = src.replace(f"from {other} import", f"from _base_{other.rsplit('.', 1)[1]} import")
        base = f"_base_{name.rsplit('.', 1)[1]}"
        mod = types.ModuleType(base)
        mod.__file__ = f"{ref}:{path}"
        sys.modules[base] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - our own repository's source
        out[name] = mod
    return out


@contextmanager
def standing_in(modules: dict[str, types.ModuleType] | None) -> Iterator[None]:
    import nsr.extraction.encoder_tracking  # noqa: F401 - today's modules, restored afterwards
    import nsr.extraction.tracking  # noqa: F401

    saved = {name: sys.modules[name] for name in NAMES}
    if modules:
        sys.modules.update(modules)
    try:
        yield
    finally:
        sys.modules.update(saved)


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_track(net: Any, modules: dict[str, types.ModuleType] | None) -> tuple[Any, float, float, float]:
    from nsr.extraction.surface import extract_mesh

    with standing_in(modules), PeakMemory() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, c = time.perf_counter(), time.process_time()
        mesh = extract_mesh(net, BOUNDS, mode="track", progress=False)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
    return mesh, dt, cpu, mem.peak_mb


def run_mc(net: Any, res: int) -> tuple[int, float, float]:
    from nsr.eval.marching_cubes import marching_cubes

    t, c = time.perf_counter(), time.process_time()
    mesh = marching_cubes(net, BOUNDS, res)
    return len(mesh.faces), time.perf_counter() - t, time.process_time() - c


def _grid_subject() -> tuple[str, Any] | None:
    sys.path.insert(0, str(ROOT / "experiments"))
    import grid_net

    if not grid_net.bench_grid.SHARED.is_dir():
        print("[grid] skipped: ../shared absent", flush=True)
        return None
    return "trained grid (bunny, 90 s)", grid_net.load_grid_net(grid_net.train_grid_net(90.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", default=["shared:bunny_3d_8x32", "grid"],
                    help="as in _bench.py (relu:DxW, shared:NAME, file:PATH[:LABEL]) or 'grid'")
    ap.add_argument("--base", default="fd978e5", help="git ref of the baseline walks")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mc", type=int, default=256, help="marching-cubes resolution (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-seconds", type=float, default=150.0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_baseline(args.base)
    cfg = TrainConfig(seconds=args.train_seconds, threads=args.threads)
    subjects = []
    for text in args.nets:
        if text == "grid":
            s = _grid_subject()
        else:
            sub = make_subject(parse_net(text), cfg, ROOT / "experiments" / "out" / "nets")
            s = (sub.label, sub.net) if sub is not None else None
        if s is not None:
            subjects.append(s)
    rows = []
    for rnd in range(args.rounds):
        for label, net in subjects:
            ref = None
            # The first extraction in a process pays for warming it (the same code measured 53.2 s
            # then 43.1 s on a grid network): alternate which goes first, and use rounds >= 2.
            order = [("baseline", base), ("today", None)]
            for name, mods in (order if rnd % 2 == 0 else order[::-1]):
                load = _load()
                mesh, dt, cpu, peak = run_track(net, mods)
                if ref is None:
                    ref = mesh
                elif not same_polygons(ref, mesh):
                    raise SystemExit(f"{label}: baseline and today's track mode differ "
                                     f"({len(ref.polygons)} against {len(mesh.polygons)} polygons)")
                rows.append({"round": rnd, "net": label, "method": f"track, {name}", "time_s": dt, "cpu_s": cpu,
                             "peak_mb": peak, "polygons": len(mesh.polygons), "load": load})
                print(f"[{label}] round {rnd} track {name}: {dt:.2f} s (cpu {cpu:.2f} s), {peak:.0f} MB, "
                      f"{len(mesh.polygons)} polygons, load {load:.2f}", flush=True)
            if args.mc:
                load = _load()
                n, dt, cpu = run_mc(net, args.mc)
                rows.append({"round": rnd, "net": label, "method": f"marching cubes {args.mc}^3", "time_s": dt,
                             "cpu_s": cpu, "polygons": n, "load": load})
                print(f"[{label}] round {rnd} marching cubes {args.mc}^3: {dt:.2f} s (cpu {cpu:.2f} s), "
                      f"load {load:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_track_batches.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                      "rows": rows})
    print("\n| network | method | best time (s) | ÷ today | CPU (s) | peak MB | polygons |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, _ in subjects:
        mine = [r for r in rows if r["net"] == label]
        today = min(r["time_s"] for r in mine if r["method"] == "track, today")
        for method in dict.fromkeys(r["method"] for r in mine):
            rs = [r for r in mine if r["method"] == method]
            best = min(rs, key=lambda r: r["time_s"])
            peak = f"{best['peak_mb']:.0f}" if "peak_mb" in best else ""
            print(f"| {label} | {method} | {best['time_s']:.2f} | {best['time_s'] / today:.2f} | {best['cpu_s']:.2f} | "
                  f"{peak} | {best['polygons']:,} |")


if __name__ == "__main__":
    main()
