"""Shared pieces of ``bench_architectures.py``, ``bench_scaling.py`` and ``profile_surface.py``.

Networks
--------
A network is named by a spec string:

- ``relu:DxW``: :class:`nsr.networks.ReLUMLP`, ``D`` hidden layers of ``W`` ReLU neurons (depth
  first, as the issues and the shared networks write it: ``8x32`` is 8 layers of 32);
- ``skip:DxW``: :class:`nsr.pl.SkipMLP`, DeepSDF style (the input concatenated back in before
  hidden layer ``D // 2``, whose predecessor has ``W - 3`` outputs);
- ``shared:NAME``: ``../shared/models/NAME.pt`` (the paper's bunny networks, e.g. ``bunny_3d_8x32``);
- ``file:PATH[:LABEL]``: any file :func:`nsr.networks.load_network` reads (state dict, nsr checkpoint).

``relu`` and ``skip`` networks are trained here on the shared Stanford bunny and cached under
``--cache`` (default ``experiments/out/nets``); a cached file is reused when every training
setting matches (its name carries a hash of them).

Training (a plain torch loop, on purpose)
-----------------------------------------
``nsr.training.lightning.ImplicitShapeModule`` accepts only a ``ReLUMLP`` on this branch, so every
network, plain or skip, is trained by the same small loop over nsr's own pieces: the samples of
:class:`nsr.training.lightning.ShapeDataModule` (mesh source, ``pool`` mode) and the loss
:class:`nsr.training.losses.ImplicitLoss`, with the settings of ``conf/experiment/mesh.yaml`` (clamped-L1
SDF regression plus the surface term, no eikonal/normal terms, batch 2048, fractions
0.2/0.6/0.2, Adam at lr 2e-3, cosine decay over the wall-time budget to 1e-5) and the SAL
geometric initialization of ``conf/model/relu_mlp.yaml`` (sphere of radius 0.3). Every network
gets the same wall time (``--train-seconds``), so larger ones take fewer steps; the steps,
the validation SDF error near the surface and the inside IoU are recorded with the weights.

Measurements (one process, methods one after another)
-----------------------------------------------------
- **time**: ``time.perf_counter`` around the one call a user makes (``nsr.extract_mesh`` or
  ``nsr.eval.marching_cubes.marching_cubes``, network evaluation included), best of ``--repeat``;
  repeats go round the methods in turn, so no method always runs first.
- **peak memory**: the process's peak resident set during the call minus its resident set just
  before (after ``gc.collect()`` and glibc ``malloc_trim``). On Linux the kernel's high-water
  mark ``VmHWM`` is reset through ``/proc/self/clear_refs`` before the call and read after it
  (exact); elsewhere a psutil thread samples the RSS every 5 ms. torch's CPU tensors live in
  malloc/mmap memory, which the RSS counts and ``tracemalloc`` does not see. On CUDA: the peak of
  ``torch.cuda.max_memory_allocated``.
- **polygons**: the exact mesh's convex polygons; marching cubes' triangles (its only polygons).
- **|f| at vertices**: the network evaluated in float64 at every vertex of the mesh (a float64
  copy of the module itself, not nsr's reading of it), max and mean.
- A method that nsr refuses for the network (``NetworkError``/``NotPiecewiseAffineError``,
  e.g. a skip network before the graph support lands in ``nsr.extraction.surface``), that runs out of
  memory or past ``--max-seconds`` gets a row that says so; the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import hashlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
BUNNY = SHARED / "meshes" / "stanford-bunny.obj"
BOUNDS = (-0.5, 0.5)  # the training box of nsr and of the shared bunny networks
DEFAULT_OUT = Path(os.environ.get("NSR_OUT", ROOT / "experiments" / "out"))
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


# --------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetSpec:
    """A network to benchmark: ``kind`` relu/skip (trained here) or file (read from ``path``)."""

    kind: str
    width: int = 0
    depth: int = 0
    path: str = ""
    label: str = ""


def parse_net(text: str) -> NetSpec:
    """``relu:DxW``, ``skip:DxW`` (depth x width), ``shared:NAME`` or ``file:PATH[:LABEL]`` as a :class:`NetSpec`."""
    kind, _, rest = text.partition(":")
    if kind in ("relu", "skip"):
        m = re.fullmatch(r"(\d+)x(\d+)", rest)
        if not m:
            raise argparse.ArgumentTypeError(f"{text!r}: write {kind}:DEPTHxWIDTH, e.g. {kind}:8x64")
        depth, width = int(m.group(1)), int(m.group(2))
        return NetSpec(kind, width, depth, label=f"{kind} {depth}x{width}")
    if kind == "shared":
        return NetSpec("file", path=str(SHARED / "models" / f"{rest}.pt"), label=rest)
    if kind == "file":
        path, _, label = rest.partition(":")
        return NetSpec("file", path=path, label=label or Path(path).stem)
    raise argparse.ArgumentTypeError(f"{text!r}: expected relu:DxW, skip:DxW, shared:NAME or file:PATH[:LABEL]")


def build_module(kind: str, width: int, depth: int) -> nn.Module:
    """A freshly initialized network (SAL sphere of radius 0.3, as ``conf/model/relu_mlp.yaml``)."""
    from nsr.networks import ReLUMLP
    from nsr.pl import SkipMLP

    if kind == "relu":
        return ReLUMLP(3, width, depth, geometric_init=True, radius=0.3)
    return SkipMLP(3, width, depth, geometric_init=True, radius=0.3)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; every field enters the cache key."""

    seconds: float = 240.0
    seed: int = 0
    pool_size: int = 1_000_000
    batch_size: int = 2048
    lr: float = 2e-3
    eta_min: float = 1e-5
    threads: int = 2
    mesh: str = str(BUNNY)

    def key(self, kind: str, width: int, depth: int) -> str:
        blob = json.dumps({**asdict(self), "kind": kind, "width": width, "depth": depth, "mesh": Path(self.mesh).name},
                          sort_keys=True)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
        return f"{Path(self.mesh).stem}_{kind}_{depth}x{width}_{self.seconds:g}s_{digest}"


def _data_module(cfg: TrainConfig) -> Any:
    from nsr.training.lightning import ShapeDataModule

    sampling = {"mode": "pool", "pool_size": cfg.pool_size, "batch_size": cfg.batch_size, "steps_per_epoch": 100,
                "fractions": {"surface": 0.2, "near": 0.6, "uniform": 0.2}, "sigmas": [0.01, 0.003],
                "seed": cfg.seed, "n_val": 20_000}
    return ShapeDataModule(kind="mesh", path=cfg.mesh, sampling=sampling)


def _cosine_lr(cfg: TrainConfig, elapsed: float) -> float:
    frac = min(1.0, elapsed / cfg.seconds)
    return cfg.eta_min + 0.5 * (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * frac))


def train_network(kind: str, width: int, depth: int, cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Train a ``kind`` network on the mesh for ``cfg.seconds`` of wall time (module docstring).

    Returns the module (eval mode) and what was measured: ``steps``, ``train_s``, ``data_s``
    (sampling the pool), ``val_sdf_mae`` (near the surface), ``val_iou`` (inside, uniform points).
    """
    from nsr.training.losses import ImplicitLoss

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net = build_module(kind, width, depth)
    t0 = time.perf_counter()
    dm = _data_module(cfg)
    dm.setup()
    data_s = time.perf_counter() - t0
    loss = ImplicitLoss(sdf=1.0, surface=1.0, eikonal=0.0, normal=0.0, clamp=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps, epoch, last = 0, 0, float("nan")
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < cfg.seconds:
        dm.set_epoch(epoch)
        for batch in dm.train_dataloader():
            elapsed = time.perf_counter() - t0
            if elapsed >= cfg.seconds:
                break
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(cfg, elapsed)
            total = loss(net, batch)["loss"]
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            steps, last = steps + 1, float(total.detach())
        epoch += 1
    train_s = time.perf_counter() - t0
    net.eval()
    val = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        mae = float((net(val["near"]) - val["near_sdf"]).abs().mean())
        pred, true = net(val["uniform"]) < 0, val["uniform_sdf"] < 0
        iou = float((pred & true).sum() / (pred | true).sum().clamp(min=1))
    meta = {"kind": kind, "width": width, "depth": depth, "steps": steps, "train_s": round(train_s, 1),
            "data_s": round(data_s, 1), "final_loss": last, "val_sdf_mae": mae, "val_iou": iou, "config": asdict(cfg)}
    return net, meta


def load_or_train(spec: NetSpec, cfg: TrainConfig, cache: Path, retrain: bool = False
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """The cached network of ``spec`` trained with ``cfg``, training (and caching) it first if needed."""
    path = cache / f"{cfg.key(spec.kind, spec.width, spec.depth)}.pt"
    if path.exists() and not retrain:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = build_module(spec.kind, spec.width, spec.depth)
        net.load_state_dict(blob["state_dict"])
        meta = dict(blob["meta"], cached=str(path))
        print(f"[{spec.label}] cached: {path.name} ({meta['steps']} steps in {meta['train_s']} s)", flush=True)
        return net.eval(), meta
    if not Path(cfg.mesh).is_file():
        raise FileNotFoundError(f"training mesh {cfg.mesh} not found")
    print(f"[{spec.label}] training for {cfg.seconds:g} s on {Path(cfg.mesh).name} ...", flush=True)
    net, meta = train_network(spec.kind, spec.width, spec.depth, cfg)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"state_dict": net.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)  # never a half-written file under the final name
    print(f"[{spec.label}] trained: {meta['steps']} steps, val SDF MAE {meta['val_sdf_mae']:.2e}, "
          f"IoU {meta['val_iou']:.3f}; cached as {path.name}", flush=True)
    return net, dict(meta, cached=str(path))


@dataclass
class Subject:
    """A network ready to measure: ``net`` as handed to nsr (module or PLNetwork), its float64
    evaluator ``f64`` ``(N, 3) float64 -> (N,)``, and facts about it."""

    label: str
    net: Any
    f64: Callable[[torch.Tensor], torch.Tensor]
    facts: dict[str, Any] = field(default_factory=dict)


def _module_facts(net: nn.Module) -> dict[str, Any]:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return {"class": type(net).__name__, "params": sum(p.numel() for p in net.parameters()),
            "neurons": sum(m.out_features for m in linears[:-1])}


def make_subject(spec: NetSpec, cfg: TrainConfig, cache: Path, retrain: bool = False) -> Subject | None:
    """A :class:`Subject` for ``spec``; ``None`` (with a message) when its file or the bunny is absent."""
    if spec.kind == "file":
        if not Path(spec.path).is_file():
            print(f"[{spec.label}] skipped: {spec.path} not found", flush=True)
            return None
        from nsr.networks import load_network

        pl = load_network(spec.path)
        if isinstance(pl, nn.Module):  # a grid or skip network: measured as the module it is
            m64 = copy.deepcopy(pl).double().eval()
            return Subject(spec.label, pl, m64, {**_module_facts(pl), "path": spec.path})
        n64 = pl.to(dtype=torch.float64, device="cpu")
        params = sum(w.numel() + b.numel() for w, b in zip(pl.weights, pl.biases))
        facts = {"class": "PLNetwork (file)", "params": params,
                 "neurons": pl.n_neurons, "widths": pl.widths, "path": spec.path}
        return Subject(spec.label, pl, n64, facts)
    if not Path(cfg.mesh).is_file():
        print(f"[{spec.label}] skipped: the training mesh {cfg.mesh} is absent (../shared missing?)", flush=True)
        return None
    module, meta = load_or_train(spec, cfg, cache, retrain)
    m64 = copy.deepcopy(module).double().eval()
    return Subject(spec.label, module, m64, {**_module_facts(module), "training": meta})


def abs_f(subject: Subject, vertices: np.ndarray, chunk: int = 2**16) -> tuple[float, float]:
    """Max and mean of ``|f|`` at ``vertices`` ``(V, 3)``, the network evaluated in float64."""
    if len(vertices) == 0:
        return float("nan"), float("nan")
    x = torch.as_tensor(np.asarray(vertices, dtype=np.float64))
    with torch.no_grad():
        f = torch.cat([subject.f64(c).reshape(-1).abs() for c in x.split(chunk)])
    return float(f.max()), float(f.mean())


# --------------------------------------------------------------------------------------
# Measuring one call: time limit, peak memory
# --------------------------------------------------------------------------------------


class MethodTimeout(BaseException):
    """Raised by the alarm of :func:`time_limit` (a BaseException, so no ``except Exception`` in nsr swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`MethodTimeout` after ``seconds`` (SIGALRM; main thread, POSIX; else no limit).

    A torch operation in progress finishes first: the signal is handled between Python bytecodes.
    """
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise MethodTimeout(f"ran past the limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return int(re.search(r"VmRSS:\s+(\d+)", PROC_STATUS.read_text()).group(1)) * 1024


def _hwm_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", PROC_STATUS.read_text()).group(1)) * 1024


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where not allowed."""
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and give glibc's free lists back to the kernel, so the next baseline is honest."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Context manager: ``peak_mb``, the peak memory of the block above the memory at its start
    (module docstring: VmHWM reset on Linux, else RSS sampled every ``interval`` s; CUDA allocator
    peak on a CUDA ``device``); ``method`` says which was used."""

    def __init__(self, device: str = "cpu", interval: float = 0.005) -> None:
        self.device, self.interval = torch.device(device), interval
        self.peak_mb = float("nan")
        self.method = ""
        self._stop = threading.Event()
        self._max = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self._base = _rss_bytes()
        self._max = self._base
        self._hwm = PROC_STATUS.exists() and _reset_hwm()
        self.method = "VmHWM (reset via /proc/self/clear_refs)" if self._hwm else f"RSS sampled every {self.interval}s"
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._hwm:
            peak = _hwm_bytes()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss_bytes())
        self.peak_mb = max(0, peak - self._base) / 2**20


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """``kind`` exact (``mode`` surface/track/complex) or mc (``resolution`` per axis)."""

    kind: str
    mode: str = ""
    resolution: int = 0

    @property
    def name(self) -> str:
        return f"exact {self.mode}" if self.kind == "exact" else f"marching cubes {self.resolution}^3"


def _exact(subject: Subject, method: Method, dtype: str | None, device: str) -> dict[str, Any]:
    from nsr.extraction.surface import extract_mesh

    mesh = extract_mesh(subject.net, BOUNDS, mode=method.mode, dtype=dtype, device=device, progress=False)
    s = mesh.stats
    keep = ("mode", "dtype", "time_s", "subdivision_s", "bounds_s", "tracking_s", "tiles", "tiles_kept",
            "seed_regions", "watertight", "unpaired_face_keys", "uncertain_signs", "memory_estimate_mb")
    return {"vertices": mesh.vertices, "polygons": len(mesh.polygons), "triangles": len(mesh.triangles),
            "mode_used": s.get("mode"), "stats": {k: s[k] for k in keep if k in s}}


class _ModuleField:
    """``(N, 3) -> (N,)`` by the module itself (for marching cubes when nsr cannot read the module)."""

    def __init__(self, module: nn.Module, device: str) -> None:
        self.module = copy.deepcopy(module).float().to(device).eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


def mc_field(subject: Subject, device: str) -> tuple[Any, str]:
    """What marching cubes evaluates: the network itself when nsr reads it (checked on a 4^3
    grid), else the module's own forward; and a note saying which."""
    from nsr.eval.marching_cubes import marching_cubes
    from nsr.networks import NetworkError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            marching_cubes(subject.net, BOUNDS, 4, device=device)
        return subject.net, "nsr reads the network"
    except NetworkError as err:
        return _ModuleField(subject.net, device), (
            f"module forward (nsr.eval.marching_cubes refused: {_first_line(err)})")


def _mc(field_: Any, method: Method, device: str) -> dict[str, Any]:
    from nsr.eval.marching_cubes import marching_cubes

    mesh, t = marching_cubes(field_, BOUNDS, method.resolution, device=device, return_timings=True)
    # the trimesh itself goes back too: its watertightness is checked after the clock stops
    return {"vertices": np.asarray(mesh.vertices), "polygons": len(mesh.faces), "triangles": len(mesh.faces),
            "stats": {"eval_s": t["eval_s"], "mesh_s": t["mesh_s"]}, "trimesh": mesh}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _unsupported_errors() -> tuple[type[BaseException], ...]:
    from nsr.networks import NetworkError

    errors: list[type[BaseException]] = [NetworkError, NotImplementedError]
    with contextlib.suppress(ImportError):
        from nsr.pl import NotPiecewiseAffineError

        errors.append(NotPiecewiseAffineError)
    return tuple(errors)


def measure(subject: Subject, method: Method, *, dtype: str | None, device: str, max_seconds: float | None,
            mc_source: tuple[Any, str] | None = None) -> dict[str, Any]:
    """One timed call of ``method`` on ``subject``: a result row (module docstring for the measures).

    ``status`` is ``ok``, ``unsupported`` (nsr refuses this network for this method),
    ``timeout``, ``out of memory`` or ``error`` (with ``message``)."""
    row: dict[str, Any] = {"net": subject.label, "method": method.name, "kind": method.kind, "mode": method.mode,
                           "resolution": method.resolution}
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught, PeakMemory(device) as mem, time_limit(max_seconds):
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            if method.kind == "exact":
                out = _exact(subject, method, dtype, device)
            else:
                out = _mc(mc_source[0], method, device)
                out["field"] = mc_source[1]
            row["time_s"] = time.perf_counter() - t0
        row.update(status="ok", peak_mb=mem.peak_mb, memory_method=mem.method)
    except _unsupported_errors() as err:
        return {**row, "status": "unsupported", "message": f"{type(err).__name__}: {_first_line(err)}"}
    except MethodTimeout as err:
        return {**row, "status": "timeout", "message": str(err)}
    except MemoryError as err:
        return {**row, "status": "out of memory", "message": _first_line(err)}
    except Exception as err:  # noqa: BLE001 - a benchmark records the failure and goes on to the next method
        traceback.print_exc()
        return {**row, "status": "error", "message": f"{type(err).__name__}: {_first_line(err)}"}
    finally:
        release_free_memory()
    verts = out.pop("vertices")
    if "trimesh" in out:  # not part of the call timed: marching cubes does not check it
        out["stats"]["watertight"] = bool(out.pop("trimesh").is_watertight)
    row.update(out, vertices=len(verts))
    row["max_abs_f"], row["mean_abs_f"] = abs_f(subject, verts)
    row["polygons_per_s"] = row["polygons"] / row["time_s"] if row["time_s"] > 0 else float("nan")
    row["warnings"] = sorted({_first_line(w.message) for w in caught})[:5]
    return row


def warm_up(methods: list[Method], *, dtype: str | None, device: str) -> None:
    """One untimed call of every method on a tiny random network, so that imports and first-call
    costs (lazy imports, thread pools, allocator growth) are not charged to the first method measured."""
    from nsr.networks import random_network

    net = random_network(3, [8, 8], seed=0)
    tiny = Subject("warm-up", net, net.to(dtype=torch.float64))
    for m in methods:
        small = Method(m.kind, m.mode, min(m.resolution, 32))
        measure(tiny, small, dtype=dtype, device=device, max_seconds=120.0, mc_source=(net, "warm-up"))


def run_subject(subject: Subject, methods: list[Method], *, repeat: int, dtype: str | None, device: str,
                max_seconds: float | None) -> list[dict[str, Any]]:
    """Every method on ``subject``, ``repeat`` rounds (methods in turn); one row per method:
    the fastest run, with every run's time and peak memory."""
    mc_source = mc_field(subject, device) if any(m.kind == "mc" for m in methods) else None
    runs: dict[Method, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in range(repeat):
        for m in methods:
            if runs[m] and runs[m][-1]["status"] != "ok":
                continue  # refused, out of memory or too slow once: not again
            row = measure(subject, m, dtype=dtype, device=device, max_seconds=max_seconds, mc_source=mc_source)
            runs[m].append(row)
            print(f"[{subject.label}] round {r + 1}/{repeat} {m.name}: {_summary(row)}", flush=True)
    rows = []
    for m in methods:
        ok = [q for q in runs[m] if q["status"] == "ok"]
        best = dict(min(ok, key=lambda q: q["time_s"]) if ok else runs[m][-1])
        if ok:
            best["times_s"] = [q["time_s"] for q in ok]
            best["peaks_mb"] = [q["peak_mb"] for q in ok]
        best["facts"] = subject.facts
        rows.append(best)
    return rows


def _summary(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('message', '')}"
    return (f"{row['time_s']:.2f} s, +{row['peak_mb']:.0f} MB, {row['polygons']:,} polygons, "
            f"max|f| {row['max_abs_f']:.1e}" + (f" (ran as {row['mode_used']})" if row.get("mode_used") not in
                                                (None, row["mode"]) else ""))


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_meta(args: argparse.Namespace) -> dict[str, Any]:
    """Machine, software and load facts recorded with every table."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "machine": platform.platform(),
            "cpu": _cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(), "commit": _git("rev-parse", "--short", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")), "loadavg_start": list(load),
            "argv": sys.argv[1:], "args": {k: str(v) for k, v in vars(args).items()}}


def warn_if_loaded(meta: dict[str, Any]) -> None:
    """Say so when other work keeps the CPUs busy: then timings are not results."""
    load, cpus = meta["loadavg_start"][0], meta["cpus"] or 1
    if load > 0.5 * cpus:
        print(f"WARNING: load average {load:.1f} on {cpus} CPUs: another job is running; timings measured now "
              "are not results (record only figures from a quiet machine)", flush=True)


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def reference_resolution(rows: list[dict[str, Any]]) -> int | None:
    """The marching cubes resolution times are divided by: 256 (issue 16's yardstick) when measured, else the lowest."""
    res = sorted({r["resolution"] for r in rows if r["kind"] == "mc"})
    return 256 if 256 in res else (res[0] if res else None)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table; ``÷ MC R³`` divides by marching cubes at :func:`reference_resolution`
    of the same network in the same run."""
    ref_res = reference_resolution(rows)
    head = (f"| network | params | method | status | time (s) | ÷ MC {ref_res}³ | peak mem. (MB) | vertices | polygons "
            "| polygons/s | max \\|f\\| | mean \\|f\\| |")
    lines = [head, "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label in dict.fromkeys(r["net"] for r in rows):
        group = [r for r in rows if r["net"] == label]
        ref = next((r["time_s"] for r in group if r["kind"] == "mc" and r["resolution"] == ref_res
                    and r["status"] == "ok"), None)
        for r in group:
            what = r["method"]
            if r.get("mode_used") and r["mode_used"] != r["mode"]:
                what += f" (ran as {r['mode_used']})"
            if r["kind"] == "mc" and r.get("field", "").startswith("module"):
                what += " (module forward)"
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('message', '')}"[:90]
            t = r.get("time_s")
            n_runs = len(r.get("times_s", []))
            time_s = f"{_fmt(t, '.2f')}" + (f" (best of {n_runs})" if n_runs > 1 else "")
            ratio = t / ref if t is not None and ref else None
            lines.append(
                f"| {label} | {_fmt(r['facts'].get('params'), ',d')} | {what} | {status.replace('|', '/')} | {time_s} "
                f"| {_fmt(ratio, '.2f')} | {_fmt(r.get('peak_mb'), '.0f')} | {_fmt(r.get('vertices'), ',d')} "
                f"| {_fmt(r.get('polygons'), ',d')} | {_fmt(r.get('polygons_per_s'), ',.0f')} "
                f"| {_fmt(r.get('max_abs_f'), '.1e')} | {_fmt(r.get('mean_abs_f'), '.1e')} |")
    return "\n".join(lines)


def training_table(subjects: list[Subject]) -> str:
    """The networks: sizes and how they were trained (or read)."""
    lines = ["| network | class | params | neurons | steps | train (s) | val SDF MAE | val IoU |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in subjects:
        t = s.facts.get("training", {})
        lines.append(f"| {s.label} | {s.facts['class']} | {s.facts['params']:,} | {s.facts['neurons']:,} "
                     f"| {_fmt(t.get('steps'), ',d')} | {_fmt(t.get('train_s'), '.0f')} "
                     f"| {_fmt(t.get('val_sdf_mae'), '.2e')} | {_fmt(t.get('val_iou'), '.3f')} |")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file (never half-written under the final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# The command line both benchmarks share
# --------------------------------------------------------------------------------------


def add_common_arguments(ap: argparse.ArgumentParser, *, resolutions: list[int], modes: list[str]) -> None:
    """Options of both benchmarks (each script sets its own ``--nets`` default)."""
    ap.add_argument("--modes", nargs="*", default=modes, choices=["surface", "track", "complex"],
                    help="exact extraction modes (default: %(default)s)")
    ap.add_argument("--resolutions", type=int, nargs="*", default=resolutions,
                    help="marching cubes samples per axis (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over the methods; the best time is kept")
    ap.add_argument("--max-seconds", type=float, default=900.0,
                    help="per call; a slower method is stopped and recorded as a timeout (0: no limit)")
    ap.add_argument("--train-seconds", type=float, default=240.0, help="wall time to train each relu/skip network")
    ap.add_argument("--pool-size", type=int, default=1_000_000, help="training samples drawn once (pool mode)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain", action="store_true", help="train again even when a cached network matches")
    ap.add_argument("--cache", type=Path, default=DEFAULT_OUT / "nets", help="where trained networks are cached")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the JSON output ($NSR_OUT)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (training and measuring)")
    ap.add_argument("--device", default="cpu", help="device of the extraction and of marching cubes")
    ap.add_argument("--dtype", default=None, choices=["float32", "float64"],
                    help="exact extraction's dtype (default: nsr's default)")


def run_benchmark(args: argparse.Namespace, name: str, complex_max_neurons: int | None = None) -> int:
    """Train or load ``args.nets``, measure every method on each, print the tables, write ``<name>.json``.

    Returns the exit status: 1 when a method failed with an unexpected error, else 0."""
    torch.set_num_threads(args.threads)
    meta = run_meta(args)
    warn_if_loaded(meta)
    cfg = TrainConfig(seconds=args.train_seconds, seed=args.seed, pool_size=args.pool_size, threads=args.threads)
    exact = [Method("exact", mode=m) for m in args.modes]
    mc = [Method("mc", resolution=r) for r in args.resolutions]
    subjects, rows = [], []
    for spec in args.nets:
        subject = make_subject(spec, cfg, args.cache, args.retrain)
        if subject is None:
            continue
        if not subjects:
            warm_up(exact + mc, dtype=args.dtype, device=args.device)
        subjects.append(subject)
        methods, skipped = exact + mc, []
        if complex_max_neurons is not None and subject.facts["neurons"] > complex_max_neurons:
            skipped = [{"net": subject.label, "method": m.name, "kind": m.kind, "mode": m.mode, "resolution": 0,
                        "status": "skipped", "facts": subject.facts,
                        "message": f"{subject.facts['neurons']} neurons > --complex-max-neurons {complex_max_neurons}"}
                       for m in methods if m.mode == "complex"]
            methods = [m for m in methods if m.mode != "complex"]
        rows += run_subject(subject, methods, repeat=args.repeat, dtype=args.dtype, device=args.device,
                            max_seconds=args.max_seconds or None) + skipped
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if not subjects:
        print("nothing measured: no network available (../shared absent?)")
        return 0
    print(f"\n{meta['date_utc']} UTC, {meta['cpu']} ({meta['cpus']} CPUs), torch {meta['torch']}, "
          f"{meta['threads']} threads, commit {meta['commit']}{' (dirty)' if meta['dirty'] else ''}, "
          f"load average {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}\n")
    print(training_table(subjects) + "\n")
    print(markdown_table(rows))
    path = args.out / f"{name}.json"
    write_json(path, {"meta": meta, "networks": {s.label: s.facts for s in subjects}, "rows": rows})
    print(f"\nwritten: {path}")
    return 1 if any(r["status"] == "error" for r in rows) else 0
