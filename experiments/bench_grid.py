"""Issue 14 benchmark: a simplex-grid network against a plain ReLU MLP at equal wall time, on the
EXACT mesh of each network.

Usage::

    python experiments/bench_grid.py                       # all shared meshes, 1, 3 and 10 minutes
    python experiments/bench_grid.py --meshes spot --minutes 1 3 --out experiments/out/bench_grid_spot

For each shared mesh (``../shared/meshes``: stanford-bunny, spot, fandisk, rocker-arm; the
script exits 0 saying so when the folder is absent) both networks train ONCE, through nsr's own
Lightning module and data module (the ``experiment=mesh`` settings: a pool of 1M samples, clamped
L1 SDF + surface loss, with optional ``--normal`` / ``--eikonal`` terms, cosine learning-rate decay
over the longest budget), for the longest ``--minutes`` budget; the network is snapshotted when
the wall clock (from the start of training) passes each budget, so one 10-minute run gives the 1-,
3- and 10-minute points (the shorter points are therefore not annealed: a run of their own would
do slightly better).

Each snapshot is measured in one process, in this order: the exact surface (``extract_mesh``
mode ``surface`` and ``track``, float64; for grid networks this needs the extractor's encoder
support, and where that is not available the error is recorded and marching cubes at 512^3
stands in, flagged ``"surface_from": "marching cubes 512^3 (exact extraction unavailable)"``),
marching cubes at 256^3 and 512^3 of the same network (network evaluation included), then
metrics against the ground truth (:func:`nsr.eval.metrics.unit_cube_chamfer`: ONet convention, point to
point in the ground truth's unit cube, ``--samples`` per mesh, default 1M) and the mesh's own floor
(:func:`nsr.eval.metrics.self_floor`, same sample count), polygons, max |f| at the exact mesh's vertices
(float64). Rows go to ``<out>/results.json`` (rewritten atomically after every row) and a
markdown table is printed at the end with the machine and date.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402

from nsr.eval.marching_cubes import marching_cubes  # noqa: E402
from nsr.eval.metrics import self_floor, unit_cube_chamfer  # noqa: E402
from nsr.networks import ReLUMLP  # noqa: E402
from nsr.pl.encoding import GridMLP  # noqa: E402
from nsr.training.lightning import ImplicitShapeModule, ShapeDataModule, TimeCosineLR  # noqa: E402
from nsr.training.losses import ImplicitLoss  # noqa: E402

SHARED = ROOT.parent / "shared" / "meshes"
MESHES = ("stanford-bunny", "spot", "fandisk", "rocker-arm")
BOX = 0.5  # training box [-BOX, BOX]^3 (experiment=mesh)
FIT = 0.45

# Recommended grid network for a 2-core CPU, experiment=grid_cpu's (issue 14's tuning, RESULTS.md): 2^15-row
# tables, MLP 16 x 2 (it reached the same SDF error per step as 8 levels 8..128 with MLP 32 x 2 at 0.73x its step
# time); since 2026-12-02 5 nested levels 6, 12, 24, 48, 96 of 4 features instead of 6 levels 8..96 of 2
# ("Nested grid levels": 3.4-4.7x fewer polygons at 2 features, the same fidelity; 4 features: fandisk's normal
# consistency 0.9896 -> 0.9913). --levels 6 --min-resolution 8 --features 2 gives the older rows' network.
GRID_DEFAULTS: dict[str, Any] = dict(width=16, depth=2, n_levels=5, features=4, min_resolution=6, max_resolution=96,
                                     table_size=2**15, include_input=True, init_scale=1e-4)
GRID_LR, GRID_TABLE_LR = 1e-3, 1e-2
MLP_WIDTH, MLP_DEPTH, MLP_LR = 64, 4, 2e-3
SAMPLING = {"mode": "pool", "pool_size": 1_000_000, "batch_size": 2048, "steps_per_epoch": 100,
            "fractions": {"surface": 0.2, "near": 0.6, "uniform": 0.2}, "n_val": 20_000}


# ---- networks ---------------------------------------------------------------------------------


def make_net(kind: str, args: argparse.Namespace) -> torch.nn.Module:
    """A fresh network: ``grid`` (GridMLP) or ``mlp`` (ReLUMLP with SAL initialization)."""
    torch.manual_seed(args.seed)
    if kind == "grid":
        opts = dict(GRID_DEFAULTS, width=args.grid_width, depth=args.grid_depth, n_levels=args.levels,
                    features=args.features, min_resolution=args.min_resolution, max_resolution=args.max_resolution,
                    table_size=2**args.log2_table)
        return GridMLP(in_dim=3, bounds=(-BOX, BOX), **opts)
    return ReLUMLP(3, args.mlp_width, args.mlp_depth)


def optimizer_factory(net: torch.nn.Module, kind: str, args: argparse.Namespace) -> Any:
    """Adam (fused: on a CPU one kernel per step, 2.6x faster than the default loop over the ~300k table
    parameters); a grid network's tables learn at their own (larger) rate, as in instant-ngp."""

    def factory(params: Any = None) -> torch.optim.Optimizer:
        if kind == "grid":
            table = [p for n, p in net.named_parameters() if n.startswith("encoding.")]
            rest = [p for n, p in net.named_parameters() if not n.startswith("encoding.")]
            return torch.optim.Adam([{"params": table, "lr": args.table_lr}, {"params": rest, "lr": args.grid_lr}],
                                    fused=True)
        return torch.optim.Adam(net.parameters(), lr=args.mlp_lr, fused=True)

    return factory


class Snapshots(L.Callback):
    """Copies of the network's state when the training wall clock passes each budget (seconds)."""

    def __init__(self, budgets_s: list[float]) -> None:
        self.budgets_s = sorted(budgets_s)
        self.taken: list[dict[str, Any]] = []
        self.t0 = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def _take(self, pl_module: L.LightningModule, step: int, budget: float) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
        self.taken.append({"budget_s": budget, "wall_s": time.perf_counter() - self.t0, "steps": step,
                           "state": state})

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        elapsed = time.perf_counter() - self.t0
        while len(self.taken) < len(self.budgets_s) and elapsed >= self.budgets_s[len(self.taken)]:
            self._take(pl_module, trainer.global_step, self.budgets_s[len(self.taken)])
        if len(self.taken) == len(self.budgets_s):
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        while len(self.taken) < len(self.budgets_s):  # stopped early (max_time): the last state stands in
            self._take(pl_module, trainer.global_step, self.budgets_s[len(self.taken)])


def train(kind: str, path: Path, args: argparse.Namespace) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Train one network on one mesh for the longest budget; return it and its snapshots."""
    budgets = [60.0 * m for m in args.minutes]
    data = ShapeDataModule(kind="mesh", path=str(path), dim=3, box=BOX, fit=FIT,
                           sampling=dict(SAMPLING, seed=args.seed, pool_size=args.pool_size))
    net = make_net(kind, args)
    module = ImplicitShapeModule(net, ImplicitLoss(sdf=1.0, surface=1.0, eikonal=args.eikonal, normal=args.normal,
                                                   gradient=args.gradient, clamp=0.1),
                                 optimizer=optimizer_factory(net, kind, args))
    snaps = Snapshots(budgets)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=100_000,
                        max_time=datetime.timedelta(seconds=max(budgets) + 120),
                        callbacks=[TimeCosineLR(budget_s=max(budgets), eta_min=1e-5), snaps],
                        limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return net, snaps.taken


# ---- measurement ------------------------------------------------------------------------------


def _shape_units(vertices: np.ndarray, source: Any) -> np.ndarray:
    return np.asarray(source.to_shape_units(vertices))


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def exact_surface(net: torch.nn.Module, mode: str) -> tuple[Any, float, str | None]:
    """The exact mesh in ``mode`` and its time (tracing included), or ``(None, nan, error)`` where extraction
    refuses. A grid network is handed over as its traced graph (:func:`nsr.pl.trace`: the encoder and the MLP)."""
    from nsr.extraction.surface import extract_mesh
    from nsr.pl import trace

    def run() -> Any:
        target = trace(net) if isinstance(net, GridMLP) else net
        return extract_mesh(target, (-BOX, BOX), mode=mode, dtype=torch.float64, progress=False)

    try:
        mesh, secs = _timed(run)
        return mesh, secs, None
    except Exception as err:  # an extractor without encoder support: recorded, and the row says so
        return None, float("nan"), f"{type(err).__name__}: {str(err)[:300]}"


def max_abs_f(net: torch.nn.Module, vertices: np.ndarray) -> float:
    """max |f| at points (box units), float64."""
    if len(vertices) == 0:
        return float("nan")
    net64 = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        x = torch.as_tensor(vertices, dtype=torch.float64)
        return float(max(net64(c).abs().max() for c in x.split(2**16)))


def measure(net: torch.nn.Module, kind: str, snap: dict[str, Any], gt: trimesh.Trimesh, source: Any,
            floor: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one snapshot (see the module docstring)."""
    net.load_state_dict(snap["state"])
    net.eval()
    row: dict[str, Any] = {"net": kind, "minutes": snap["budget_s"] / 60, "train_wall_s": round(snap["wall_s"], 1),
                           "steps": snap["steps"], "params": sum(p.numel() for p in net.parameters())}
    meshes: dict[str, trimesh.Trimesh] = {}
    modes = args.grid_modes if kind == "grid" and args.grid_modes is not None else args.modes
    for mode in modes:
        mesh, secs, err = exact_surface(net, mode)
        row[f"{mode}_s"] = round(secs, 2)
        if err:
            row[f"{mode}_error"] = err
            continue
        row[f"{mode}_polygons"] = len(mesh.polygons)
        row[f"{mode}_max_abs_f"] = max_abs_f(net, mesh.vertices)
        meshes[mode] = trimesh.Trimesh(_shape_units(mesh.vertices, source), mesh.triangles, process=False)
    with torch.no_grad():
        for res in args.mc:
            mc, secs = _timed(lambda r=res: marching_cubes(lambda x: net(x), (-BOX, BOX), r))
            row[f"mc{res}_s"] = round(secs, 2)
            row[f"mc{res}_triangles"] = len(mc.faces)
            meshes[f"mc{res}"] = trimesh.Trimesh(_shape_units(np.asarray(mc.vertices), source), mc.faces,
                                                 process=False)
    first = next((m for m in modes if m in meshes), None)
    if first is None:
        fallback = f"mc{max(args.mc)}" if args.mc else None
        row["surface_from"] = (f"marching cubes {max(args.mc)}^3 (exact extraction unavailable)" if fallback
                               else "none (exact extraction unavailable, no marching cubes)")
        first = fallback
    else:
        row["surface_from"] = f"exact ({first} mode)"
    if first is not None:
        m = unit_cube_chamfer(meshes[first], gt, args.samples)
        row |= {k: m[k] for k in ("chamfer_l1", "normal_consistency", "f_score@0.005", "f_score@0.01")}
        row["chamfer_over_floor"] = m["chamfer_l1"] / floor["chamfer_l1"]
    return row


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a temporary name, then rename (no half-written results file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows."""
    head = ("| mesh | net | min | steps | surface from | Chamfer-L1 (1M) | / floor | NC | F@0.5% | F@1% | polygons "
            "| surface s | track s | MC256 s | MC512 s | max abs f |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "floor_chamfer_l1" in r:
            lines.append(f"| {r['mesh']} | floor (GT vs itself) | | | | {r['floor_chamfer_l1']:.5f} | 1 "
                         f"| {r['floor_normal_consistency']:.4f} | {r['floor_f_score@0.005']:.4f} "
                         f"| {r['floor_f_score@0.01']:.4f} | | | | | | |")
            continue
        lines.append(
            f"| {r['mesh']} | {r['net']} | {r['minutes']:g} | {r['steps']} | {r['surface_from']} "
            f"| {r.get('chamfer_l1', float('nan')):.5f} | {r.get('chamfer_over_floor', float('nan')):.2f} "
            f"| {r.get('normal_consistency', float('nan')):.4f} | {r.get('f_score@0.005', float('nan')):.4f} "
            f"| {r.get('f_score@0.01', float('nan')):.4f} | {r.get('surface_polygons', r.get('track_polygons', '-'))} "
            f"| {r.get('surface_s', float('nan')):.1f} | {r.get('track_s', float('nan')):.1f} "
            f"| {r.get('mc256_s', float('nan')):.1f} | {r.get('mc512_s', float('nan')):.1f} "
            f"| {r.get('surface_max_abs_f', r.get('track_max_abs_f', float('nan'))):.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshes", nargs="*", default=list(MESHES), help="mesh stems under ../shared/meshes")
    ap.add_argument("--minutes", nargs="+", type=float, default=[1.0, 3.0, 10.0],
                    help="training budgets; one run of the longest, snapshots at the others")
    ap.add_argument("--nets", nargs="+", default=["grid", "mlp"], choices=["grid", "mlp"])
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "out" / "bench_grid")
    ap.add_argument("--samples", type=int, default=1_000_000, help="samples per mesh for the metrics and the floor")
    ap.add_argument("--modes", nargs="*", default=["surface", "track"], choices=["surface", "track"])
    ap.add_argument("--grid-modes", nargs="*", default=None, choices=["surface", "track"],
                    help="exact modes for grid networks (default: --modes); surface mode on a trained grid "
                    "takes over an hour on 2 CPU cores")
    ap.add_argument("--mc", nargs="*", type=int, default=[256, 512], help="marching-cubes resolutions")
    ap.add_argument("--pool-size", type=int, default=SAMPLING["pool_size"], help="training samples drawn once")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--normal", type=float, default=0.0,
                    help="weight of the normal-alignment loss on surface samples (both networks; a double backward)")
    ap.add_argument("--eikonal", type=float, default=0.0, help="weight of the eikonal loss (both networks)")
    ap.add_argument("--gradient", type=float, default=0.0,
                    help="weight of the SDF-gradient loss at near-surface samples (both networks)")
    ap.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("grid network (defaults: the recommended 2-core CPU settings)")
    g.add_argument("--levels", type=int, default=GRID_DEFAULTS["n_levels"])
    g.add_argument("--features", type=int, default=GRID_DEFAULTS["features"])
    g.add_argument("--min-resolution", type=int, default=GRID_DEFAULTS["min_resolution"])
    g.add_argument("--max-resolution", type=int, default=GRID_DEFAULTS["max_resolution"])
    g.add_argument("--log2-table", type=int, default=15)
    g.add_argument("--grid-width", type=int, default=GRID_DEFAULTS["width"])
    g.add_argument("--grid-depth", type=int, default=GRID_DEFAULTS["depth"])
    g.add_argument("--grid-lr", type=float, default=GRID_LR)
    g.add_argument("--table-lr", type=float, default=GRID_TABLE_LR)
    m = ap.add_argument_group("plain MLP")
    m.add_argument("--mlp-width", type=int, default=MLP_WIDTH)
    m.add_argument("--mlp-depth", type=int, default=MLP_DEPTH)
    m.add_argument("--mlp-lr", type=float, default=MLP_LR)
    args = ap.parse_args(argv)
    if any(t <= 0 for t in args.minutes) or args.samples < 1000:
        ap.error("--minutes must be > 0 and --samples >= 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipping: {SHARED} not present")
        return 0
    torch.set_num_threads(args.threads)
    missing = [m for m in args.meshes if not (SHARED / f"{m}.obj").is_file()]
    if missing:
        print(f"error: no mesh {missing} under {SHARED} (have {sorted(p.stem for p in SHARED.glob('*.obj'))})")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    rows: list[dict[str, Any]] = []
    results = args.out / "results.json"
    settings = vars(args) | {"out": str(args.out)}
    for stem in args.meshes:
        path = SHARED / f"{stem}.obj"
        gt = trimesh.load(path, force="mesh", process=False)
        floor, floor_s = _timed(lambda g=gt: self_floor(g, args.samples))
        rows.append({"mesh": stem, "floor_s": round(floor_s, 1)} | {f"floor_{k}": v for k, v in floor.items()})
        source = ShapeDataModule(kind="mesh", path=str(path), dim=3, box=BOX, fit=FIT).source
        for kind in args.nets:
            print(f"[{stem}] training {kind} for {max(args.minutes):g} min", flush=True)
            try:
                net, snaps = train(kind, path, args)
            except TypeError as err:  # a Lightning module that trains ReLUMLPs only (before issue 13's branch)
                rows.append({"mesh": stem, "net": kind, "error": f"training refused: {err}"})
                print(f"[{stem}] {kind}: training refused: {err}", flush=True)
                continue
            for snap in snaps:
                try:
                    row = {"mesh": stem} | measure(net, kind, snap, gt, source, floor, args)
                except Exception as err:  # keep the other rows; the failure is recorded, not hidden
                    row = {"mesh": stem, "net": kind, "minutes": snap["budget_s"] / 60, "steps": snap["steps"],
                           "error": "".join(traceback.format_exception_only(err)).strip()}
                rows.append(row)
                print(json.dumps(row, default=float), flush=True)
                write_json(results, {"machine": machine, "started": started, "args": settings, "rows": rows})
        write_json(results, {"machine": machine, "started": started, "args": settings, "rows": rows})
    print(f"\nmachine: {machine}; started {started}; results: {results}")
    print(table([r for r in rows if "error" not in r or "floor_chamfer_l1" in r]))
    for r in rows:
        if "error" in r:
            print(f"error: {r['mesh']} {r['net']}: {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
