"""``nsr-extract``: the exact zero-level mesh (or the full complex) of a ReLU network.

Hydra app (``conf/extract.yaml``); :func:`run_extract` is the same job for a plain config.
Outputs in ``out_dir``: ``mesh.obj``, ``mesh.ply``, ``mesh_polygons.ply`` (``polygons=true``)
(a 2D network: ``level_set.ply``, ``level_set.obj``, ``level_set.svg``, see :mod:`nsr.polylines`),
``complex.npz`` (``mode=complex``), ``preview.png`` and, written last by rename,
``stats.json``: a directory without ``stats.json`` is an incomplete run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nsr import limits
from nsr._config import (
    ConfigError,
    as_mapping,
    check_mode_options,
    check_overrides,
    config_dir,
    fail,
    validate_extract,
)
from nsr.eval.marching_cubes import as_bounds
from nsr.eval.metrics import max_rss_bytes, peak_memory
from nsr.files import atomic_write
from nsr.networks import NetworkError, PLNetwork, load_network
from nsr.pl.graph import PLGraph, as_graph

DEFAULT_BOUNDS = (-0.5, 0.5)
_BOX_KEYS = ("bounds", "box", "domain")
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float64"``/``"float32"`` (or a torch dtype) to a torch dtype.

    Parameters
    ----------
    name : str or torch.dtype
        ``"float64"``, ``"double"`` or ``"float32"``; a ``torch.dtype`` is returned as it is.

    Returns
    -------
    torch.dtype

    Raises
    ------
    ValueError
        For another name.

    Examples
    --------
    >>> import torch
    >>> parse_dtype("float32"), parse_dtype("double"), parse_dtype(torch.float64)
    (torch.float32, torch.float64, torch.float64)
    """
    if isinstance(name, torch.dtype):
        return name
    if str(name) not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[str(name)]


def _find_box(cfg: Any) -> Any:
    """First value under a key named bounds/box/domain in a nested config, else ``None``."""
    if isinstance(cfg, Mapping):
        for key in _BOX_KEYS:
            if cfg.get(key) is not None:
                return cfg[key]
        for value in cfg.values():
            found = _find_box(value)
            if found is not None:
                return found
    return None


def _run_box(run_dir: Path) -> Any:
    """The training box of a run: ``data.box`` of its ``config.yaml`` or ``.hydra/config.yaml``
    (scalar ``b`` means ``[-b, b]^dim``), else the first bounds/box/domain key; else ``None``."""
    paths = [run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"]
    cfg_path = next((p for p in paths if p.is_file()), None)
    if cfg_path is None:
        return None
    cfg = OmegaConf.load(cfg_path)
    try:
        box = OmegaConf.select(cfg, "data.box")
        if box is not None:
            return OmegaConf.to_container(box) if OmegaConf.is_config(box) else box
    except Exception:  # unresolvable interpolation: fall back to a plain search
        pass
    box = _find_box(OmegaConf.to_container(cfg, resolve=False))
    return None if isinstance(box, str) else box


def resolve_network(spec: str | Path) -> tuple[PLNetwork | torch.nn.Module, Any, Path]:
    """Read ``net=``: a run directory, a checkpoint or any network file.

    Returns the network (a :class:`PLNetwork` for a plain ReLU MLP, else the module rebuilt
    from nsr's own classes by :func:`nsr.networks.load_network`, for :func:`nsr.pl.as_graph`),
    the run's box (``None`` when unknown) and the file read. A run
    directory is read through its ``checkpoints/last.ckpt``; its box from the run's config.

    Parameters
    ----------
    spec : str or Path
        A training run directory, a checkpoint (a checkpoint under a run's ``checkpoints/``
        gets the run's box) or a network file (``~`` is expanded).

    Returns
    -------
    network : PLNetwork or torch.nn.Module
        The network read (as data: :func:`nsr.networks.load_network`).
    box : float, list or None
        The run's training box (``data.box``), ``None`` outside a run.
    path : Path
        The file read.

    Raises
    ------
    FileNotFoundError
        For a missing path, or a directory without ``checkpoints/last.ckpt``.
    nsr.networks.NetworkError
        For a file that is not a network nsr reads.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nsr.networks import octahedron_network
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     torch.save(octahedron_network().state_dict(), Path(tmp) / "octahedron.pt")
    ...     net, box, path = resolve_network(Path(tmp) / "octahedron.pt")
    >>> type(net).__name__, net.widths, box, path.name
    ('PLNetwork', [6], None, 'octahedron.pt')
    """
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"{path} is a directory but not a training run: {ckpt} does not exist"
            )
        return load_network(ckpt), _run_box(path), ckpt
    if not path.exists():
        raise FileNotFoundError(f"net={spec}: no such run directory, checkpoint or network file")
    box = _run_box(path.parent.parent) if path.parent.name == "checkpoints" else None
    return load_network(path), box, path


def prepare_out_dir(out_dir: str | Path, names: tuple[str, ...] = ("stats.json",)) -> Path:
    """Create ``out_dir``, check it is writable and remove stale completion markers.

    Parameters
    ----------
    out_dir : str or Path
        The output directory (created with its parents).
    names : tuple of str
        Files that mark a finished run (``stats.json``); removed so that a run that fails later
        does not look complete.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    PermissionError
        When the directory cannot be created or written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = prepare_out_dir(Path(tmp) / "run")
    ...     _ = (out / "stats.json").write_text("{}")
    ...     out = prepare_out_dir(out)
    ...     sorted(p.name for p in out.iterdir())  # the stale stats.json is gone, nothing else left
    []
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output directory {out} is not writable: {err}") from err
    for name in names:
        (out / name).unlink(missing_ok=True)
    return out


def write_json(data: Mapping[str, Any], path: Path) -> Path:
    """Write JSON through a temporary file and rename (:func:`nsr.files.atomic_write`).

    Numpy and torch values become lists and numbers, NaN and inf become ``null``, other objects their ``str``.

    Parameters
    ----------
    data : mapping
        The values to write.
    path : Path
        Destination.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import json, tempfile, numpy as np
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = write_json({"n": np.int64(3), "box": np.eye(2), "err": float("nan")}, Path(tmp) / "s.json")
    ...     json.loads(path.read_text())
    {'n': 3, 'box': [[1.0, 0.0], [0.0, 1.0]], 'err': None}
    """
    return atomic_write(path, json.dumps(_jsonable(data), indent=2, allow_nan=True).encode())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _output_dir(cfg: Any) -> Path:
    if cfg.get("out_dir"):
        return Path(str(cfg.out_dir))
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        raise ValueError("out_dir is required outside a Hydra app") from None


def _box(cfg: Any, run_box: Any, dim: int) -> np.ndarray:
    chosen = cfg.get("bounds")
    if chosen is None:
        chosen = run_box if run_box is not None else DEFAULT_BOUNDS
    if OmegaConf.is_config(chosen):
        chosen = OmegaConf.to_container(chosen)
    try:
        return as_bounds(chosen, dim)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bounds={chosen}: {err}") from None


def surface_f_vector(n_vertices: int, polygons: list[np.ndarray]) -> list[int]:
    """``[V, E, P]`` of a polygon mesh: vertices, distinct polygon edges, polygons.

    Parameters
    ----------
    n_vertices : int
        Number of vertices ``V`` (used by the polygons or not).
    polygons : list of (n_i,) int ndarray
        Vertex cycles (each closed implicitly: its last vertex joins its first).

    Returns
    -------
    list of int
        ``[V, E, P]``; ``V - E + P`` is the Euler characteristic (2 for a sphere).

    Examples
    --------
    A cube's six quads: 8 vertices, 12 edges, 6 faces, Euler characteristic 2:

    >>> import numpy as np
    >>> quads = [np.array(q) for q in [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4],
    ...                                [1, 5, 7, 3]]]
    >>> v, e, p = surface_f_vector(8, quads)
    >>> [v, e, p], v - e + p
    ([8, 12, 6], 2)
    """
    if not polygons:
        return [n_vertices, 0, 0]
    lens = np.array([len(p) for p in polygons])
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in polygons])
    start = np.repeat(np.cumsum(lens) - lens, lens)
    nxt = flat[start + (np.arange(len(flat)) - start + 1) % np.repeat(lens, lens)]
    edges = np.unique(np.sort(np.stack([flat, nxt], 1), axis=1), axis=0)
    return [n_vertices, int(len(edges)), len(polygons)]


def abs_g(graph: PLGraph, mesh: Any, chunk: int = 2**14) -> np.ndarray:
    """``|g - level|`` ``(V,)`` at the mesh's vertices, in float64 on the CPU: ``g`` is the
    network's piecewise-affine output before any output transform and ``mesh.level`` the level
    of ``g`` extracted (for a network without a transform, ``|f - level|`` of the network itself).

    Parameters
    ----------
    graph : PLGraph
        The network.
    mesh : ExactMesh
        Anything with ``vertices`` ``(V, D)`` and ``level``.
    chunk : int
        Vertices evaluated at a time.

    Returns
    -------
    (V,) float64 ndarray

    Examples
    --------
    The octahedron's six vertices lie exactly on ``|x| + |y| + |z| = 0.5``:

    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from nsr.networks import octahedron_network
    >>> from nsr.pl import as_graph
    >>> corners = 0.5 * np.vstack([np.eye(3), -np.eye(3)])
    >>> abs_g(as_graph(octahedron_network()), SimpleNamespace(vertices=corners, level=0.0)).tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    g64 = graph.to(device="cpu", dtype=torch.float64)
    x = torch.as_tensor(np.asarray(mesh.vertices, dtype=np.float64))
    with torch.no_grad():
        parts = [(g64(x[s : s + chunk]) - mesh.level).abs() for s in range(0, len(x), chunk)]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def _mesh_stats(mesh: Any) -> dict[str, Any]:
    from nsr.extraction.mesh import edges_paired

    # |g - level| as extract_mesh measured it (float64): at the vertices of the level set only,
    # since with close=true the box caps add vertices (box corners) that are not on it
    empty = mesh.is_empty
    f_vec = surface_f_vector(len(mesh.vertices), list(mesh.polygons))
    return {
        "surface_f_vector": f_vec,
        "surface_euler_characteristic": f_vec[0] - f_vec[1] + f_vec[2],
        "n_vertices": int(len(mesh.vertices)),
        "n_polygons": int(len(mesh.polygons)),
        "n_triangles": int(len(mesh.triangles)),
        "watertight": bool(not empty and edges_paired(mesh.triangles, len(mesh.vertices))),
        "abs_f_vertices_mean": None if empty else float(mesh.stats["mean_abs_f"]),
        "abs_f_vertices_max": None if empty else float(mesh.stats["max_abs_f"]),
    }


def _complex_stats(cplx: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"n_complex_vertices": int(len(cplx.vertices))}
    for key in ("f_vector", "euler_characteristic"):
        try:
            out[key] = _jsonable(getattr(cplx, key))
        except Exception:  # optional attributes of the complex
            out[key] = None
    return out


def _extract_complex(net: PLGraph, box: np.ndarray, kw: dict, out: Path) -> tuple[Any, dict]:
    from nsr.extraction.complex import extract_complex

    cplx = extract_complex(net, box, **kw)
    cplx.save(out / "complex.npz")
    return cplx, _complex_stats(cplx)


def _write_mesh(mesh: Any, out: Path, polygons: bool) -> list[Path]:
    if mesh.dim == 2:  # polylines: PLY edges, OBJ line elements and SVG
        files = [out / f"level_set.{ext}" for ext in ("ply", "obj", "svg")]
    else:
        files = [out / "mesh.obj", out / "mesh.ply"] + ([out / "mesh_polygons.ply"] if polygons else [])
    for f in files:
        mesh.export(f, polygons=f.name == "mesh_polygons.ply") if mesh.dim == 3 else mesh.export(f)
    return files


def _level_set_stats(mesh: Any, net: PLGraph) -> dict[str, Any]:
    from nsr.polylines import polyline_stats

    fv = abs_g(net, mesh) if len(mesh.vertices) else np.zeros(0)
    return polyline_stats(mesh.vertices, mesh.polylines) | {
        "abs_f_vertices_mean": float(fv.mean()) if fv.size else None,
        "abs_f_vertices_max": float(fv.max()) if fv.size else None,
    }


def _preview(mesh: Any, cplx: Any, net: PLGraph, box: np.ndarray, out: Path, level: float = 0.0) -> Path | None:
    from nsr.eval import render

    if net.in_dim == 2:
        from nsr.extraction.complex import extract_complex

        if cplx is None:  # the picture shows the linear regions: 2-D complexes are small
            cplx = extract_complex(net, box, progress=False)
        # The classic picture: regions colored by the network's value, the level set bold, axes, a colorbar.
        return render.render_regions(cplx, out / "preview.png", level=level,
                                     title="The 2D network's linear regions, its value (color) and its level set")
    if mesh is None:
        return None
    if mesh.is_empty:
        # nsr.eval.render reads PLNetworks: a plain MLP graph goes as the network of g
        plain = net.to_plnetwork(pre_transform=True) if net.is_mlp and net.is_relu and net.encoder is None else net
        return render.render_slice(plain, box, 2, float(box[2].mean()), out / "preview.png")
    return render.render_mesh(mesh.to_trimesh(), out / "preview.png", polygons=mesh.polygons)


def _stage(opts: dict[str, Any], text: str) -> None:
    """One line per stage on stderr when progress is asked for (a log reads as a list of stages)."""
    if opts.get("progress"):
        print(f"nsr-extract: {text}", file=sys.stderr, flush=True)


def run_extract(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Extract, write every output, and return the stats written to ``stats.json``.

    ``cfg`` keys as in ``conf/extract.yaml``. Every option is checked first
    (:func:`nsr._config.validate_extract`, then the checks that need the network), so bad
    input raises before anything is written: :class:`nsr._config.ConfigError` (a
    ``ValueError``) for a bad option, ``FileNotFoundError`` (missing run, checkpoint or file),
    :class:`nsr.networks.NetworkError` (not a ReLU MLP), ``PermissionError`` (unwritable
    ``out_dir``). A 3-D network gives a mesh (``mesh.obj``, ``mesh.ply``); a 2-D one its level
    set as polylines (``level_set.ply`` with edges, ``level_set.obj`` with line elements,
    ``level_set.svg``; see :mod:`nsr.polylines`).

    Parameters
    ----------
    cfg : DictConfig or mapping
        ``net`` (required), ``bounds``, ``mode``, ``level``, ``close``, ``dtype``, ``device``,
        ``workers``, ``tiles``, ``band``, ``seeds``, ``memory_limit_gb``, ``polygons``,
        ``preview``, ``progress``, and ``out_dir`` (required outside a Hydra app).

    Returns
    -------
    dict
        What ``stats.json`` holds (counts, ``surface_f_vector``, the Euler characteristic,
        ``watertight``, ``abs_f_vertices_max`` (float64, at the vertices on the level set: not
        the box corners that ``close=true`` adds), timings, memory, ``files``), plus ``out_dir``.

    Examples
    --------
    The octahedron network's exact mesh: its 6 corners, 8 triangles, a closed surface:

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nsr.networks import octahedron_network
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     torch.save(octahedron_network().state_dict(), Path(tmp) / "octahedron.pt")
    ...     stats = run_extract({"net": str(Path(tmp) / "octahedron.pt"), "bounds": [-1, 1],
    ...                          "out_dir": str(Path(tmp) / "out"), "preview": False})
    ...     written = sorted(p.name for p in (Path(tmp) / "out").iterdir())
    >>> stats["surface_f_vector"], stats["surface_euler_characteristic"], stats["watertight"]
    ([6, 12, 8], 2, True)
    >>> stats["abs_f_vertices_max"] < 1e-15, written
    (True, ['mesh.obj', 'mesh.ply', 'stats.json'])
    """
    cfg = as_mapping(cfg)
    opts = validate_extract(cfg)
    t_start = time.perf_counter()
    mode = opts["mode"]
    dtype, device = parse_dtype(opts["dtype"]), opts["device"]
    _stage(opts, f"loading {opts['net']}")
    loaded, run_box, source = resolve_network(opts["net"])
    net = as_graph(loaded)  # the one form the extraction reads (skips, residuals, output transforms)
    box = _box(cfg, run_box, net.in_dim)
    if mode == "auto":
        from nsr.extraction.surface import default_mode, simplex_tiles_allowed

        mode = default_mode(net, box if simplex_tiles_allowed(opts["tiles"], opts["band"], opts["workers"]) else None)
        check_mode_options(opts, mode)
    if net.in_dim not in (2, 3):
        raise ConfigError(f"net={opts['net']}: a {net.in_dim}-D network has no mesh or polylines; use the library "
                          "(nsr.extract_complex(net, bounds).level_set()) for other dimensions")
    if net.in_dim == 2 and (mode == "track" or opts["close"]):
        what = "mode=track" if mode == "track" else "close=true"
        raise ConfigError(f"{what} needs a 3-D network (this one is 2-D); use mode=surface or mode=complex")
    args = limits.check_extract_arguments(
        dim=net.in_dim, n_neurons=net.n_neurons, max_width=max(net.widths, default=1), itemsize=dtype.itemsize,
        mode=mode, level=opts["level"], tiles=opts["tiles"], band=opts["band"], workers=opts["workers"],
        seeds=opts["seeds"], memory_limit=opts["memory_limit"])
    out = prepare_out_dir(_output_dir(cfg))
    kw = {"dtype": dtype, "device": device, "progress": opts["progress"], "memory_limit": args["memory_limit"]}
    stats: dict[str, Any] = {"net": str(source), "mode": mode, "bounds": box.tolist(), "level": opts["level"]}
    if opts["mode"] != mode:
        stats["mode_requested"] = opts["mode"]
    stats |= {"dtype": str(dtype).removeprefix("torch."), "device": str(device or "cpu")}
    timings: dict[str, float] = {"load_s": time.perf_counter() - t_start}
    mesh, cplx = None, None
    with peak_memory() as mem:
        if mode == "complex":
            _stage(opts, "extracting the complex")
            t = time.perf_counter()
            cplx, cstats = _extract_complex(net, box, {k: kw[k] for k in ("dtype", "device", "progress")}
                                            | {"memory_limit": kw["memory_limit"]}, out)
            stats |= cstats
            timings["complex_s"] = time.perf_counter() - t
        from nsr.extraction.polygons import mesh_from_complex
        from nsr.extraction.surface import extract_mesh

        _stage(opts, f"extracting the level set ({mode} mode)")
        t = time.perf_counter()
        if cplx is not None:  # mesh the complex already extracted, not a second one
            mesh = mesh_from_complex(cplx, level=opts["level"], close=opts["close"])
            if mesh.is_empty:
                warnings.warn(limits.empty_level_set_message(cplx.net, box, opts["level"]), stacklevel=2)
        else:
            extra = {k: opts[k] for k in ("tiles", "band", "seeds") if opts[k] is not None}
            # "auto" goes to the library as asked: it also answers in track mode where surface mode
            # exceeds the memory budget, and the mesh's stats say which mode answered
            mesh = extract_mesh(net, box, mode=opts["mode"], close=opts["close"], level=opts["level"],
                                workers=opts["workers"], **kw, **extra)
            stats["mode"] = mesh.stats.get("mode", mode)
        timings["surface_s"] = time.perf_counter() - t
    t = time.perf_counter()
    stats |= _mesh_stats(mesh) if net.in_dim == 3 else _level_set_stats(mesh, net)
    stats["surface_stats"] = _jsonable(getattr(mesh, "stats", {}))
    _stage(opts, f"writing outputs to {out}")
    files = _write_mesh(mesh, out, opts["polygons"]) if not mesh.is_empty else []
    timings["export_s"] = time.perf_counter() - t
    if opts["preview"]:
        t = time.perf_counter()
        png = _preview(mesh, cplx, net, box, out, net.level(opts["level"]))
        files += [png] if png else []
        timings["preview_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    stats["timings"] = timings
    stats["memory"] = dict(mem) | {"max_rss_mb": max_rss_bytes() / 2**20}
    if torch.cuda.is_available():
        stats["memory"]["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    stats["files"] = [str(f) for f in files + ([out / "complex.npz"] if cplx is not None else [])]
    write_json(stats, out / "stats.json")
    stats["out_dir"] = str(out)
    return stats


USER_ERRORS = (FileNotFoundError, NetworkError, PermissionError, MemoryError, ValueError, OSError)


def summary_line(stats: Mapping[str, Any]) -> str:
    """What was extracted, in one line: a mesh's vertices and polygons, or a 2-D level set's
    vertices, segments, polylines and closed loops.

    Parameters
    ----------
    stats : mapping
        The stats :func:`run_extract` returns; a 2-D level set's have ``n_segments``.

    Returns
    -------
    str

    Examples
    --------
    >>> summary_line({"n_vertices": 6, "n_polygons": 8})
    'exact mesh: 6 vertices, 8 polygons'
    >>> summary_line({"n_vertices": 4, "n_segments": 4, "n_polylines": 1, "n_closed_loops": 1, "n_components": 1})
    'exact level set (2D): 4 vertices, 4 segments, 1 polylines (1 closed loops, 1 components)'
    """
    if "n_segments" in stats:
        return (f"exact level set (2D): {stats['n_vertices']} vertices, {stats['n_segments']} segments, "
                f"{stats['n_polylines']} polylines ({stats['n_closed_loops']} closed loops, "
                f"{stats['n_components']} components)")
    return f"exact mesh: {stats.get('n_vertices', 0)} vertices, {stats.get('n_polygons', 0)} polygons"


def _app(cfg: DictConfig) -> None:
    try:
        stats = run_extract(cfg)
    except USER_ERRORS as err:
        fail("extract", err)
    print(summary_line(stats))
    print(f"run directory: {stats['out_dir']}")


def main() -> None:
    """Console script ``nsr-extract net=PATH [bounds=[lo,hi]] [mode=complex] ...`` (``--help`` lists the options).

    Reads ``sys.argv``; prints :func:`summary_line` and the run directory; a bad option or
    file ends the process with one message and exit status 2 (not a traceback).

    Examples
    --------
    From a shell (not run here; :func:`run_extract` runs the same job from Python):

    >>> import subprocess
    >>> subprocess.run(["nsr-extract", "net=outputs/train/<run>", "mode=complex"])  # doctest: +SKIP
    """
    check_overrides("extract", sys.argv[1:])
    hydra.main(config_path=config_dir(), config_name="extract", version_base="1.3")(_app)()


if __name__ == "__main__":
    main()
