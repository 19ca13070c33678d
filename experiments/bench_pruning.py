"""Surface mode before and after a change of its engine, in ONE process (issue 16).

The baseline is the engine's pruning and subdivision modules (``nsr/extraction/pruning.py``,
``nsr/extraction/subdivide.py``) at a git ref (``--base``), read with ``git show`` and loaded
under other module names; every other module is shared. Each round runs, on each network, the
baseline surface mode, today's surface mode and marching cubes 256^3 (``nsr.eval.marching_cubes``,
float32) one after another, in turns, so that a machine shared with other jobs slows them alike;
each row carries the load average read just before it, and the process's CPU time
(``time.process_time``; one torch thread by default), which another job's load inflates far
less than the wall time. Both surface runs must give the same
polygons (count, region patterns) and the same vertex set (bitwise): the script stops otherwise.

    python experiments/bench_pruning.py --nets shared:bunny_3d_8x32 relu:4x64 --rounds 2

Networks as in ``_bench.py`` (``relu:4x64`` is trained there once, ~2.5 min, and cached under
``experiments/out/nets``). Writes ``bench_pruning.json`` to ``--out``. Time: ``time.perf_counter``
around ``extract_mesh``; peak memory: the process's peak resident set during the call above the
resident set before it (``_bench.PeakMemory``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import BOUNDS, DEFAULT_OUT, ROOT, PeakMemory, TrainConfig, make_subject, parse_net, write_json


def load_baseline(ref: str) -> types.ModuleType:
    """The subdivision module at ``ref``, reading the pruning module at ``ref`` too."""
    def show(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{path}"], capture_output=True, text=True,
                              check=True).stdout

    modules = {}
    for name, path, patch in [("_base_pruning", "nsr/extraction/pruning.py", None),
                              ("_base_subdivide", "nsr/extraction/subdivide.py",
                               ("from nsr.extraction.pruning import", "from _base_pruning import"))]:
        src = show(path)
        if patch:
            src = src.replace(*patch)
        mod = types.ModuleType(name)
        mod.__file__ = f"{ref}:{path}"
        sys.modules[name] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - our own repository's source
        modules[name] = mod
    return modules["_base_subdivide"]


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_surface(net: Any, engine: Any) -> tuple[Any, float, float, float]:
    import nsr.extraction.surface as surface

    saved = surface.subdivide
    surface.subdivide = engine
    try:
        with PeakMemory() as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, c = time.perf_counter(), time.process_time()
            mesh = surface.extract_mesh(net, BOUNDS, progress=False)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        surface.subdivide = saved
    return mesh, dt, cpu, mem.peak_mb


def run_mc(net: Any, res: int) -> tuple[int, float, float, float]:
    from nsr.eval.marching_cubes import marching_cubes

    with PeakMemory() as mem:
        t, c = time.perf_counter(), time.process_time()
        mesh = marching_cubes(net, BOUNDS, res)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
    return len(mesh.faces), dt, cpu, mem.peak_mb


def same_polygons(a: Any, b: Any) -> bool:
    if len(a.polygons) != len(b.polygons) or len(a.vertices) != len(b.vertices):
        return False
    pa = {r.tobytes() for r in a.polygon_patterns}
    pb = {r.tobytes() for r in b.polygon_patterns}
    va = np.unique(a.vertices, axis=0)
    vb = np.unique(b.vertices, axis=0)
    return pa == pb and va.shape == vb.shape and bool((va == vb).all())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", type=parse_net,
                    default=[parse_net("shared:bunny_3d_8x32"), parse_net("relu:4x64")])
    ap.add_argument("--base", default="ed4a451", help="git ref of the baseline engine")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mc", type=int, nargs="*", default=[256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-seconds", type=float, default=150.0)
    ap.add_argument("--cache", type=Path, default=DEFAULT_OUT / "nets")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from nsr.extraction.subdivide import subdivide

    base = load_baseline(args.base).subdivide
    cfg = TrainConfig(seconds=args.train_seconds, threads=args.threads)
    rows: list[dict[str, Any]] = []
    for spec in args.nets:
        subject = make_subject(spec, cfg, args.cache)
        if subject is None:
            continue
        for rnd in range(args.rounds):
            meshes = {}
            order = [("baseline", base), ("new", subdivide)]
            for name, engine in order if rnd % 2 == 0 else order[::-1]:
                load = _load()
                mesh, dt, cpu, peak = run_surface(subject.net, engine)
                meshes[name] = mesh
                rows.append({"net": subject.label, "round": rnd, "method": f"surface ({name})", "time_s": dt,
                             "cpu_s": cpu, "peak_mb": peak, "polygons": len(mesh.polygons),
                             "vertices": len(mesh.vertices), "load": load})
                print(rows[-1], flush=True)
            if not same_polygons(meshes["baseline"], meshes["new"]):
                raise SystemExit(f"{subject.label}: the new engine's polygons differ from the baseline's")
            for res in args.mc:
                load = _load()
                n, dt, cpu, peak = run_mc(subject.net, res)
                rows.append({"net": subject.label, "round": rnd, "method": f"marching cubes {res}^3", "time_s": dt,
                             "cpu_s": cpu,
                             "peak_mb": peak, "polygons": n, "load": load})
                print(rows[-1], flush=True)
    for r in rows:
        mc = [m for m in rows if m["net"] == r["net"] and m["round"] == r["round"]
              and m["method"] == f"marching cubes {args.mc[0]}^3"] if args.mc else []
        r["ratio_to_mc"] = r["time_s"] / mc[0]["time_s"] if mc else None
        r["cpu_ratio_to_mc"] = r["cpu_s"] / mc[0]["cpu_s"] if mc else None
    print("| network | round | method | time (s) | CPU (s) | time / MC | CPU / MC | peak (MB) | polygons | load |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratios = [f"{x:.2f}" if x is not None else "" for x in (r["ratio_to_mc"], r["cpu_ratio_to_mc"])]
        print(f"| {r['net']} | {r['round']} | {r['method']} | {r['time_s']:.2f} | {r['cpu_s']:.2f} | {ratios[0]} | "
              f"{ratios[1]} | {r['peak_mb']:.0f} | {r['polygons']:,} | {r['load']:.2f} |")
    write_json(args.out / "bench_pruning.json", {"base": args.base, "rows": rows})


if __name__ == "__main__":
    main()
