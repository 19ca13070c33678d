"""Profile (issue 16): where the complete default extraction (surface mode) spends its time.

For each network (default: the shared 8x32 bunny network and a 4x64 ReLU MLP trained on the
bunny, cached as by ``bench_scaling.py``), after a warm-up extraction of a tiny network (imports,
first-call costs), ``nsr.extract_mesh(net, (-0.5, 0.5), mode=--mode)`` runs once per profiler:

- ``sample`` (default): a thread samples the main thread's Python stack every ``--interval``
  seconds (torch releases the GIL inside its operations, so samples land there too); each sample
  is weighted by the wall time since the previous one and given to an engine **phase** by the
  nsr functions on the stack (``PHASES`` below; the innermost nsr function that a rule names
  decides, so helpers such as ``_chunks`` or ``unpack_bits`` count for their caller; a few
  outer contexts, e.g. ``_measure``, win over everything under them). While ``subdivide`` is on
  the stack the sample also records its current ``layer`` (the loop of ``split_by_layers``),
  which gives the per-layer split.
  Reports: time per phase, phases per layer, the hottest nsr functions and source lines
  (innermost nsr frame, torch operations they call included).
- ``cprofile``: ``cProfile`` over the same call; the functions with the largest own time
  (torch operations appear as builtins such as ``{built-in method torch.addmm}``) and the
  largest cumulative time. Its per-call overhead inflates Python-heavy code, so its total is
  longer than the sampled run's.
- ``torch``: ``torch.profiler`` (CPU), operators by self CPU time.

    python experiments/profile_surface.py                                   # 8x32 bunny and relu 4x64
    python experiments/profile_surface.py --nets shared:bunny_3d_8x32 --profilers sample
    python experiments/profile_surface.py --nets file:run/checkpoints/last.ckpt:mine --mode track

Phase names follow today's engine (``nsr/extraction/complex.py``,
``nsr/extraction/surface.py``, ``nsr/extraction/tracking.py``,
``nsr/pl/bounds.py``); functions no rule names are reported as ``unclassified: <function>`` so
that the rules can follow a refactor. Writes ``profile_surface.json`` to ``--out`` ($NSR_OUT,
default ``experiments/out/``). Networks whose files are absent (../shared missing) are skipped.
Proportions are informative on a busy machine; absolute times are not.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import sys
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from _bench import (
    BOUNDS,
    DEFAULT_OUT,
    ROOT,
    Subject,
    TrainConfig,
    make_subject,
    parse_net,
    run_meta,
    warn_if_loaded,
    write_json,
)

NSR_DIR = str(ROOT / "nsr")

# Outer contexts: when one of these is anywhere on the stack, the sample is theirs.
CONTEXTS = [
    ("measurement (|f| at vertices, watertight check)", r"_measure"),
    ("tracking: seeds", r"grid_seeds|_seed_starts"),
]
SPLIT = "subdivision: split edges"
# Innermost first: the first nsr frame (from the innermost out) whose qualified name matches one
# of these decides the phase; frames no rule names pass the sample to their caller.
PHASES = [
    ("subdivision: memory guard", r"_check_memory|skeleton_bytes"),
    (SPLIT, r"split_by_constraint|snap_to_zero|positive_side|box_skeleton"),
    ("evaluation (pre-activations)", r"_evaluate|_layer_values|_values|PLNetwork\.(__call__|preactivations)"
                                     r"|PLGraph\.(__call__|preactivations|evaluate\w*)|evaluate\w*|activation_patterns"),
    ("bounds / pruning", r"sign_tolerances|band_cells|Band\.\w+|output_bounds|layer_bounds|may_reach|_tiles_reaching"
                         r"|_prune\w*|_region_ids|_region_hashes|_region_members|_region_blocks|_vertex_hashes"
                         r"|_zobrist_tables|_all_columns|TileBounds\.\w+|_keep_live_regions|_interval\w*|_crown\w*|_relax\w*|_relu_relaxation"
                         r"|_linear_bounds|interval_bounds|linear_bounds|concretize|activation_range|relaxation"
                         r"|tile_grid"),
    ("mesh: polygon building (cycles, orientation, normals)", r"order_cycles|_orient|_compact_rows|_polygon_mesh"
                                                              r"|_polygon_faces|fan_triangles|\w*local_gradients"
                                                              r"|_plane_to_constraint|_polylines"),
    # the own lines of _mesh_from_arrays build face keys, pair them and weld vertices by identity
    ("mesh: face pairing / welding", r"_global_zeros|weld_tracks|_unique_rows|_neighbours|_mesh_from_arrays"
                                     r"|_mesh_from_tracks|mesh_from_complex"),
    ("tracking: walks", r"walk_polygons|_first_hit|_vertex|region_constraints|_columns|track_surface"),
    ("subdivision: driver (own lines of subdivide)", r"subdivide|split_by_layers"),
    ("setup (checks, conversion)", r"as_network|as_graph|check_\w+|_check\w*|resolve_dtype|PLNetwork\.to|as_bounds"),
    ("driver (own lines of extract_mesh and its mode functions)", r"extract_mesh|_subdivided_mesh|_track_mesh"
                                                                  r"|track_polygons|extract_complex"),
]
# Row grouping (hash + sort) serves several phases: it counts for its caller's phase, except that
# under the split it is the pairing of the new vertices of each face into new edges.
GROUPING = re.compile(r"(^|\.)(group_equal_rows|hash_rows|_mix)$")
PAIRING_IN_SPLIT = "subdivision: face pairing (grouping new face keys)"
_CONTEXTS = [(name, re.compile(rf"(^|\.)({rx})$")) for name, rx in CONTEXTS]
_PHASES = [(name, re.compile(rf"(^|\.)({rx})$")) for name, rx in PHASES]


def classify(qualnames: list[str]) -> str:
    """The phase of a stack given as nsr qualified names, innermost first (module docstring)."""
    for name, rx in _CONTEXTS:
        if any(rx.search(q) for q in qualnames):
            return name
    grouping = False
    for q in qualnames:
        if GROUPING.search(q):
            grouping = True
            continue
        for name, rx in _PHASES:
            if rx.search(q):
                return PAIRING_IN_SPLIT if grouping and name == SPLIT else name
    return f"unclassified: {qualnames[0]}" if qualnames else "outside nsr (extract_mesh's caller)"


class StackSampler:
    """Samples one thread's Python stack every ``interval`` s; ``samples``: ``(seconds, phase, layer,
    innermost nsr function, innermost nsr line, innermost three nsr functions)``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[tuple[float, str, int | None, str, str, str]] = []
        self._stop = threading.Event()
        self._target = threading.get_ident()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StackSampler:
        self._last = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._target)
            now = time.perf_counter()
            dt, self._last = now - self._last, now
            if frame is not None:
                self.samples.append((dt, *self._describe(frame)))

    @staticmethod
    def _describe(frame: Any) -> tuple[str, int | None, str, str, str]:
        names, layer, first_line = [], None, ""
        while frame is not None:
            code = frame.f_code
            if code.co_filename.startswith(NSR_DIR):
                qual = getattr(code, "co_qualname", code.co_name)
                if not names:
                    rel = Path(code.co_filename).relative_to(ROOT)
                    first_line = f"{rel}:{frame.f_lineno} ({qual})"
                names.append(qual)
                if code.co_name in ("split_by_layers", "subdivide") and layer is None:  # the layer loop
                    value = frame.f_locals.get("layer")
                    layer = value if isinstance(value, int) else None
            frame = frame.f_back
        path = " < ".join(names[:3]) or "-"
        return classify(names), layer, names[0] if names else "-", first_line or "-", path


def _extract(subject: Subject, mode: str, dtype: str | None) -> Any:
    from nsr.extraction.surface import extract_mesh

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_mesh(subject.net, BOUNDS, mode=mode, dtype=dtype, progress=False)


def warm_up(mode: str, dtype: str | None) -> None:
    """One extraction of a tiny random network: imports and first-call costs out of the profiles."""
    from nsr.networks import random_network

    net = random_network(3, [8, 8], seed=0)
    _extract(Subject("warm-up", net, net), mode, dtype)


def _share(table: dict[Any, float], total: float) -> list[dict[str, Any]]:
    return [{"name": k, "seconds": round(v, 3), "percent": round(100 * v / total, 1)}
            for k, v in sorted(table.items(), key=lambda kv: -kv[1])]


def profile_sampled(subject: Subject, mode: str, dtype: str | None, interval: float, top: int) -> dict[str, Any]:
    """The sampled profile of one extraction (module docstring)."""
    t0 = time.perf_counter()
    with StackSampler(interval) as sampler:
        mesh = _extract(subject, mode, dtype)
    wall = time.perf_counter() - t0
    phase: dict[str, float] = defaultdict(float)
    by_layer: dict[tuple[int, str], float] = defaultdict(float)
    func: dict[str, float] = defaultdict(float)
    line: dict[str, float] = defaultdict(float)
    path: dict[str, float] = defaultdict(float)
    for dt, ph, layer, fn, ln, chain in sampler.samples:
        phase[ph] += dt
        func[fn] += dt
        line[ln] += dt
        path[chain] += dt
        if layer is not None:
            by_layer[(layer, ph)] += dt
    total = sum(phase.values()) or 1.0
    layers = sorted({layer for layer, _ in by_layer})
    per_layer = [{"layer": layer, "seconds": round(sum(v for (q, _), v in by_layer.items() if q == layer), 3),
                  "phases": {p: round(v, 3) for (q, p), v in by_layer.items() if q == layer}} for layer in layers]
    return {"wall_s": wall, "sampled_s": total, "samples": len(sampler.samples), "interval_s": interval,
            "polygons": len(mesh.polygons), "stats": {k: v for k, v in mesh.stats.items()
                                                     if isinstance(v, (int, float, str, bool))},
            "phases": _share(phase, total), "per_layer": per_layer,
            "functions": _share(func, total)[:top], "lines": _share(line, total)[:top],
            "call_paths": _share(path, total)[:top]}


def profile_cprofile(subject: Subject, mode: str, dtype: str | None, top: int) -> dict[str, Any]:
    """cProfile of one extraction: the top functions by own time and by cumulative time."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    _extract(subject, mode, dtype)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, lineno, fname), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = fname if file == "~" else f"{Path(file).name}:{lineno}({fname})"
        rows.append({"function": where, "calls": ncalls, "own_s": round(tottime, 3), "cumulative_s": round(cumtime, 3)})
    return {"wall_s": wall, "by_own_time": sorted(rows, key=lambda r: -r["own_s"])[:top],
            "by_cumulative_time": sorted(rows, key=lambda r: -r["cumulative_s"])[:top]}


def profile_torch(subject: Subject, mode: str, dtype: str | None, top: int) -> dict[str, Any]:
    """torch.profiler (CPU) of one extraction: operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _extract(subject, mode, dtype)
    wall = time.perf_counter() - t0
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    ops = [{"op": e.key, "calls": e.count, "self_s": round(e.self_cpu_time_total / 1e6, 3)} for e in events]
    return {"wall_s": wall, "operators": ops}


def print_sampled(label: str, p: dict[str, Any]) -> None:
    print(f"\n### {label}: sampled profile ({p['wall_s']:.1f} s wall, {p['samples']} samples, "
          f"{p['polygons']:,} polygons)\n")
    print("| phase | seconds | % |\n| --- | ---: | ---: |")
    for r in p["phases"]:
        print(f"| {r['name']} | {r['seconds']:.2f} | {r['percent']:.1f} |")
    if p["per_layer"]:
        names = list(dict.fromkeys(ph for r in p["per_layer"] for ph in r["phases"]))
        print("\nWhile `subdivide` runs, per layer (seconds; the last layer index is the output):\n")
        print("| layer | total | " + " | ".join(names) + " |\n| ---: | ---: |" + " ---: |" * len(names))
        for r in p["per_layer"]:
            cells = " | ".join(f"{r['phases'].get(n, 0.0):.2f}" for n in names)
            print(f"| {r['layer']} | {r['seconds']:.2f} | {cells} |")
    print("\nHottest nsr functions (innermost nsr frame, torch calls included):\n")
    print("| function | seconds | % |\n| --- | ---: | ---: |")
    for r in p["functions"]:
        print(f"| `{r['name']}` | {r['seconds']:.2f} | {r['percent']:.1f} |")
    print("\nHottest call paths (innermost three nsr functions, callee < caller):\n")
    print("| call path | seconds | % |\n| --- | ---: | ---: |")
    for r in p["call_paths"]:
        print(f"| `{r['name']}` | {r['seconds']:.2f} | {r['percent']:.1f} |")
    print("\nHottest nsr lines:\n")
    print("| line | seconds | % |\n| --- | ---: | ---: |")
    for r in p["lines"]:
        print(f"| `{r['name']}` | {r['seconds']:.2f} | {r['percent']:.1f} |")
    engine = {k: p["stats"][k] for k in ("time_s", "subdivision_s", "bounds_s", "tiles", "tiles_kept")
              if k in p["stats"]}
    print(f"\nnsr's own stats: {engine}")


def print_cprofile(label: str, p: dict[str, Any]) -> None:
    print(f"\n### {label}: cProfile ({p['wall_s']:.1f} s wall with cProfile's overhead)\n")
    print("| function | calls | own (s) | cumulative (s) |\n| --- | ---: | ---: | ---: |")
    for r in p["by_own_time"]:
        print(f"| `{r['function']}` | {r['calls']:,} | {r['own_s']:.2f} | {r['cumulative_s']:.2f} |")
    print("\nBy cumulative time:\n")
    print("| function | calls | own (s) | cumulative (s) |\n| --- | ---: | ---: | ---: |")
    for r in p["by_cumulative_time"]:
        print(f"| `{r['function']}` | {r['calls']:,} | {r['own_s']:.2f} | {r['cumulative_s']:.2f} |")


def print_torch(label: str, p: dict[str, Any]) -> None:
    print(f"\n### {label}: torch.profiler ({p['wall_s']:.1f} s wall)\n")
    print("| operator | calls | self CPU (s) |\n| --- | ---: | ---: |")
    for r in p["operators"]:
        print(f"| `{r['op']}` | {r['calls']:,} | {r['self_s']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", type=parse_net,
                    default=[parse_net("shared:bunny_3d_8x32"), parse_net("relu:4x64")],
                    help="relu:DxW, skip:DxW (depth x width), shared:NAME or file:PATH[:LABEL] "
                    "(default: shared:bunny_3d_8x32 relu:4x64)")
    ap.add_argument("--mode", default="surface", choices=["surface", "track", "complex"],
                    help="extraction mode profiled (default: surface, the complete default)")
    ap.add_argument("--profilers", nargs="*", default=["sample", "cprofile"], choices=["sample", "cprofile", "torch"])
    ap.add_argument("--interval", type=float, default=0.002, help="seconds between stack samples")
    ap.add_argument("--top", type=int, default=20, help="rows of the function and line tables")
    ap.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default: nsr's default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-seconds", type=float, default=240.0, help="for relu/skip networks not cached yet")
    ap.add_argument("--pool-size", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=DEFAULT_OUT / "nets",
                    help="trained networks (shared with the benchmarks)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of profile_surface.json ($NSR_OUT)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = run_meta(args)
    warn_if_loaded(meta)
    cfg = TrainConfig(seconds=args.train_seconds, seed=args.seed, pool_size=args.pool_size, threads=args.threads)
    warm_up(args.mode, args.dtype)
    results: dict[str, Any] = {}
    for spec in args.nets:
        subject = make_subject(spec, cfg, args.cache)
        if subject is None:
            continue
        res: dict[str, Any] = {"facts": subject.facts}
        if "sample" in args.profilers:
            res["sampled"] = profile_sampled(subject, args.mode, args.dtype, args.interval, args.top)
            print_sampled(subject.label, res["sampled"])
        if "cprofile" in args.profilers:
            res["cprofile"] = profile_cprofile(subject, args.mode, args.dtype, args.top)
            print_cprofile(subject.label, res["cprofile"])
        if "torch" in args.profilers:
            res["torch"] = profile_torch(subject, args.mode, args.dtype, args.top)
            print_torch(subject.label, res["torch"])
        results[subject.label] = res
    if not results:
        print("nothing profiled: no network available (../shared absent?)")
        return 0
    path = args.out / "profile_surface.json"
    write_json(path, {"meta": meta, "mode": args.mode, "results": results})
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
