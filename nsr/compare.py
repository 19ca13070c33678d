"""``nsr-compare``: the exact zero-level mesh against marching cubes at several resolutions.

Hydra app (``conf/compare.yaml``); :func:`run_compare` is the same job for a plain config.
One row per method and resolution (see :data:`COLUMNS`); distances are measured against
the ground-truth mesh given as ``reference=PATH`` (in the network's coordinates), otherwise
against the exact mesh (the ``reference`` column says which). Outputs in ``out_dir``:
``compare.csv``, ``compare.md``, ``time_vs_resolution.png``, ``error_vs_resolution.png``,
``side_by_side.png``, ``meshes/*.ply`` and, written last by rename, ``compare.json``.
"""

from __future__ import annotations

import csv
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import trimesh
from omegaconf import DictConfig

from nsr._config import ConfigError, as_mapping, check_overrides, config_dir, fail, validate_compare
from nsr.eval.marching_cubes import check_memory, marching_cubes
from nsr.eval.metrics import compare_meshes, peak_memory
from nsr.extract import (
    USER_ERRORS,
    _box,
    _output_dir,
    parse_dtype,
    prepare_out_dir,
    resolve_network,
    write_json,
)
from nsr.networks import PLNetwork
from nsr.pl.graph import as_graph

COLUMNS = [
    "method", "resolution", "eval_s", "mesh_s", "total_s", "peak_rss_mb", "n_vertices",
    "n_faces", "abs_f_vertices_mean", "abs_f_vertices_max", "abs_f_samples_mean",
    "abs_f_samples_max", "chamfer_l1", "chamfer_l2", "normal_consistency", "f_score@0.005",
    "f_score@0.01", "hausdorff", "watertight", "min_angle_p1", "min_angle_p5", "min_angle_p50",
    "reference",
]  # fmt: skip
MD_COLUMNS = [
    ("method", "method", "{}"), ("resolution", "res", "{}"), ("total_s", "time s", "{:.2f}"),
    ("eval_s", "eval s", "{:.2f}"), ("mesh_s", "mesh s", "{:.2f}"),
    ("peak_rss_mb", "+RSS MB", "{:.0f}"), ("n_vertices", "V", "{:d}"), ("n_faces", "F", "{:d}"),
    ("abs_f_vertices_max", "max abs f (verts)", "{:.1e}"),
    ("abs_f_samples_mean", "mean abs f (samples)", "{:.1e}"),
    ("chamfer_l1", "CD-L1", "{:.2e}"), ("chamfer_l2", "CD-L2", "{:.2e}"),
    ("normal_consistency", "NC", "{:.4f}"), ("f_score@0.005", "F@0.5%", "{:.3f}"),
    ("f_score@0.01", "F@1%", "{:.3f}"), ("hausdorff", "Hausdorff", "{:.2e}"),
    ("watertight", "watertight", "{}"), ("min_angle_p5", "min-angle p5 deg", "{:.1f}"),
]  # fmt: skip


def _exact_mesh(net: PLNetwork, box: np.ndarray, cfg: Any) -> tuple[trimesh.Trimesh, dict, Any]:
    from nsr.extraction.surface import extract_mesh

    kw = {"dtype": parse_dtype(cfg.get("dtype", "float64")), "device": cfg.get("device")}
    with peak_memory() as mem:
        t = time.perf_counter()
        mesh = extract_mesh(net, box, mode=str(cfg.get("mode", "auto")), progress=False, **kw)
        total = time.perf_counter() - t
    tm = mesh.to_trimesh() if not mesh.is_empty else trimesh.Trimesh()
    timing = {"eval_s": float("nan"), "mesh_s": float("nan"), "total_s": total}
    return tm, timing | {"peak_rss_mb": mem["delta_rss_mb"]}, mesh


def _mc_mesh(net: PLNetwork, box: np.ndarray, res: int, cfg: Any) -> tuple[trimesh.Trimesh, dict]:
    dtype = parse_dtype(cfg.get("mc_dtype", "float32"))
    with peak_memory() as mem:
        mesh, timing = marching_cubes(
            net, box, res, dtype=dtype, device=cfg.get("device"), return_timings=True
        )
    return mesh, timing | {"peak_rss_mb": mem["delta_rss_mb"]}


def _row(method: str, res: int | None, mesh: trimesh.Trimesh, timing: dict, ref: Any, cfg: Any,
         net: PLNetwork, ref_name: str) -> dict[str, Any]:  # fmt: skip
    n, seed = int(cfg.get("n_samples", 100_000)), int(cfg.get("seed", 0))
    metrics = compare_meshes(mesh, ref, n_samples=n, seed=seed, net=net)
    row = {"method": method, "resolution": res, "reference": ref_name} | timing | metrics
    return {k: row.get(k) for k in COLUMNS}


def _resolutions(resolutions: list[int]) -> list[int]:
    for r in resolutions:
        check_memory(r)  # refuse before any work
    return resolutions


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the main columns (NaN and missing shown as ``-``).

    Parameters
    ----------
    rows : sequence of mapping
        Rows keyed by :data:`COLUMNS` (missing keys are fine).

    Returns
    -------
    str
        The table, one line per row after the header and separator, ending with a newline.

    Examples
    --------
    >>> from nsr.compare import format_markdown
    >>> table = format_markdown([{"method": "marching_cubes", "resolution": 64, "total_s": 0.25, "n_faces": 14820}])
    >>> table.splitlines()[2][:46]
    '| marching_cubes | 64 | 0.25 | - | - | - | - |'
    """
    head = "| " + " | ".join(h for _, h, _ in MD_COLUMNS) + " |"
    sep = "| " + " | ".join("---" for _ in MD_COLUMNS) + " |"
    lines = [head, sep]
    for row in rows:
        cells = [_fmt(row.get(k), f) for k, _, f in MD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _plots(rows: list[dict], out: Path) -> list[Path]:
    from nsr.eval import render

    mc = [r for r in rows if r["method"] == "marching_cubes"]
    exact = next((r for r in rows if r["method"] == "exact"), None)
    if not mc:
        return []
    x = [r["resolution"] for r in mc]
    times = {name: [r[k] for r in mc] for k, name in TIME_NAMES.items()}
    hl = {f"exact mesh (nsr): {exact['total_s']:.2f} s": exact["total_s"]} if exact else None
    files = [render.plot_series(x, times, out / "time_vs_resolution.png", RESOLUTION_LABEL, "wall time (s)",
                                "Marching cubes' time against resolution; dashed: the exact mesh's", hlines=hl)]
    # Distances are lengths in the network's input (box) units; |f| is in output units: two panels.
    ref = str(mc[0]["reference"])
    dist = {f"{name} to the {ref}": [r[k] for r in mc] for k, name in DISTANCE_NAMES.items()}
    res = {f"marching cubes: {name}": [r[k] for r in mc] for k, name in RESIDUAL_NAMES.items()}
    hl = {f"exact mesh: {name}": exact[k] for k, name in RESIDUAL_NAMES.items()} if exact else None
    files.append(render.plot_errors(x, dist, res, out / "error_vs_resolution.png", residual_lines=hl,
                                    title=f"Marching cubes against resolution, distances to the {ref}; dashed: "
                                          "the exact mesh",
                                    distance_label="distance (input units of the network)"))  # fmt: skip
    return [f for f in files if f]


RESOLUTION_LABEL = "marching-cubes resolution (samples per axis)"
TIME_NAMES = {"eval_s": "evaluating the network on the grid", "mesh_s": "marching cubes on those values",
              "total_s": "total"}  # fmt: skip
DISTANCE_NAMES = {"chamfer_l1": "CD-L1 (mean)", "hausdorff": "Hausdorff (largest)"}
RESIDUAL_NAMES = {"abs_f_samples_mean": "mean |f| at surface samples", "abs_f_vertices_max": "max |f| at vertices"}


def run_compare(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Run the comparison, write every output and return ``{"rows", "out_dir", "files", ...}``.

    Bad input (missing network or reference, not a ReLU MLP, resolutions that do not fit in
    memory, unwritable ``out_dir``) raises before anything is written.

    Parameters
    ----------
    cfg : DictConfig or mapping
        Keys as in ``conf/compare.yaml``: ``net`` (required), ``resolutions``, ``reference``,
        ``out_dir``, ``render``, ``n_samples``, ...

    Returns
    -------
    dict
        ``rows`` (one dict per mesh, keys :data:`COLUMNS`), ``out_dir``, ``files``, ``net``,
        ``bounds``, ``reference`` and ``markdown`` (:func:`format_markdown` of the rows).

    Raises
    ------
    nsr._config.ConfigError, FileNotFoundError, ValueError
        On bad input, before anything is written.

    Examples
    --------
    The octahedron network's exact mesh against marching cubes at 17 samples per axis, whose
    grid nodes lie on the octahedron's planes, so that both meshes are on its zero set:

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nsr.compare import run_compare
    >>> from nsr.networks import octahedron_network
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     torch.save(octahedron_network(0.5).state_dict(), Path(tmp) / "octa.pt")
    ...     result = run_compare({"net": str(Path(tmp) / "octa.pt"), "bounds": [-1, 1], "resolutions": [17],
    ...                           "n_samples": 2000, "render": False, "out_dir": str(Path(tmp) / "cmp")})
    >>> [(r["method"], r["n_faces"], r["abs_f_vertices_max"]) for r in result["rows"]]
    [('exact', 8, 0.0), ('marching_cubes', 488, 0.0)]
    """
    cfg = as_mapping(cfg)
    opts = validate_compare(cfg)
    loaded, run_box, source = resolve_network(opts["net"])
    net = as_graph(loaded)  # skips, residuals, output transforms: the one form every stage reads
    if net.in_dim != 3:
        raise ConfigError(f"net={opts['net']}: compare needs a 3D network, this one has input dimension "
                          f"{net.in_dim}; use nsr-extract for its level set")
    box = _box(cfg, run_box, 3)
    resolutions = _resolutions(opts["resolutions"])
    gt = opts["reference_mesh"]
    out = prepare_out_dir(_output_dir(cfg), ("compare.json",))
    (out / "meshes").mkdir(exist_ok=True)
    meshes: list[tuple[str, int | None, trimesh.Trimesh, dict]] = []
    polygons = None
    if cfg.get("exact", True):
        tm, timing, exact = _exact_mesh(net, box, cfg)
        meshes.append(("exact", None, tm, timing))
        polygons = exact.polygons
    for res in resolutions:
        meshes.append(("marching_cubes", res, *_mc_mesh(net, box, res, cfg)))
    ref, ref_name = (gt, f"ground truth {Path(str(cfg.reference)).name}") if gt else (None, "")
    if ref is None:
        ref, ref_name = (meshes[0][2], "exact mesh") if meshes[0][0] == "exact" else (None, "")
    if ref is None:
        raise ConfigError("nothing to compare against: set exact=true or reference=PATH")
    if len(ref.faces) == 0:
        raise ValueError("the exact mesh is empty (the network does not cross the level in the box), so there is "
                         "nothing to measure distances to; give reference=PATH or check bounds")
    rows = [_row(m, r, tm, t, ref, cfg, net, ref_name) for m, r, tm, t in meshes]
    files = _write_outputs(rows, meshes, polygons, out, bool(cfg.get("render", True)))
    result = {"net": str(source), "bounds": box.tolist(), "reference": ref_name, "rows": rows}
    result["files"] = [str(f) for f in files]
    write_json(result, out / "compare.json")
    return result | {"out_dir": str(out), "markdown": format_markdown(rows)}


def _write_outputs(rows: list[dict], meshes: list, polygons: Any, out: Path,
                   pictures: bool) -> list[Path]:  # fmt: skip
    _write_csv(rows, out / "compare.csv")
    (out / "compare.md").write_text(format_markdown(rows))
    files = [out / "compare.csv", out / "compare.md"]
    for method, res, tm, _ in meshes:
        name = out / "meshes" / (f"{method}.ply" if res is None else f"{method}_{res}.ply")
        if len(tm.faces):
            tm.export(name)
            files.append(name)
    if pictures:
        files += _plots(rows, out)
        titles = ["exact mesh (nsr)" if r is None else f"marching cubes {r}³" for m, r, _, _ in meshes]
        polys = [polygons if m == "exact" else None for m, _, _, _ in meshes]
        png = _side_by_side([tm for _, _, tm, _ in meshes], titles, polys, [_caption(r) for r in rows], out)
        files += [png] if png else []
    return files


def _caption(row: Mapping[str, Any]) -> str:
    """The numbers under one mesh of ``side_by_side.png``."""
    kind = "triangles of planar polygons" if row["method"] == "exact" else "triangles"
    lines = [f"{_fmt(row['n_faces'], '{:d}')} {kind}, {_fmt(row['total_s'], '{:.2f}')} s",
             f"max |f| at vertices {_fmt(row['abs_f_vertices_max'], '{:.0e}')}"]
    if row["method"] != "exact" or not str(row["reference"]).startswith("exact"):
        lines.append(f"CD-L1 to the {row['reference']}: {_fmt(row['chamfer_l1'], '{:.1e}')}")
    return "\n".join(lines)


def _side_by_side(meshes: list, titles: list[str], polys: list, captions: list[str], out: Path) -> Path | None:
    from nsr.eval import render

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return render.render_side_by_side(
            meshes, titles, out / "side_by_side.png", polygons=polys, captions=captions,
            title="The same network meshed by nsr (exact) and by marching cubes; |f|: the network's value, "
                  "0 on its surface")  # fmt: skip


def _app(cfg: DictConfig) -> None:
    try:
        result = run_compare(cfg)
    except USER_ERRORS as err:
        fail("compare", err)
    print(result["markdown"])
    print(f"run directory: {result['out_dir']}")


def main() -> None:
    """Console script ``nsr-compare net=PATH [resolutions=[64,128,256,512]] [reference=MESH]``
    (``--help`` lists the options); reads ``sys.argv``.

    Examples
    --------
    From a shell (not run here):

    >>> import subprocess
    >>> subprocess.run(["nsr-compare", "net=outputs/train/<run>", "resolutions=[32,64]"])  # doctest: +SKIP
    """
    check_overrides("compare", sys.argv[1:])
    hydra.main(config_path=config_dir(), config_name="compare", version_base="1.3")(_app)()


if __name__ == "__main__":
    main()
