"""``python -m nsr.demo`` (``make demo``): why exact extraction matters, in a few minutes on a CPU.

The demo trains a small ReLU network on a mechanical part that nsr builds itself
(:func:`nsr.training.shapes.bracket`: sharp creases, a rib 0.03 thick, four round holes), extracts the
network's exact zero-level mesh once (timed once), meshes the same network with marching cubes
at a few resolutions, and measures every mesh three ways:

* against the **true shape** (the analytic SDF the network was trained on): ``|SDF|`` at
  area-weighted mesh samples, and Chamfer-L1 / Hausdorff against a dense sample of the true
  surface (points projected onto the zero set of the SDF);
* against the **network**: ``|f|`` at the vertices and at mesh samples;
* marching cubes against the **exact mesh** (the network's own surface).

It renders the pictures that tell the story (``overview.png``, ``exact_polygons.png``,
``mc_error.png``, ``slice_y0.png``, ``regions_y0.png``, ``error_vs_resolution.png``), writes
``summary.md`` and ``summary.json``, and prints the table and the path of every output.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from nsr._config import config_dir

DEMO_RESOLUTIONS = (32, 64, 128)
# The demo's training: the bracket, a 64x4 network, a fixed pool of samples (the analytic
# shape's surface projection is the slow part of sampling: drawing it once keeps the steps cheap),
# the SDF and surface losses only (the eikonal and normal terms double a step's cost), a higher
# learning rate and more samples near the surface. Measured one after another on one core
# (2026-12-01, experiments/RESULTS.md): the old settings (120 epochs with the eikonal and normal
# terms) reached Chamfer-L1 4.7e-3 to the true shape and no hole; 300 epochs of these 3.5e-3
# with surface samples from projected box points, 9.2e-4 and all four holes with samples spread
# by area (nsr.training.data.AnalyticSource). From a fresh clone on a quiet 2-core CPU, `make demo`
# trains 283 s and takes 336 s in all (the old settings: 206 s and 249 s).
DEMO_OVERRIDES = (
    "data=bracket",
    "model=small",
    "model.net.width=64",
    "model.net.depth=4",
    "model.optimizer.lr=3e-3",
    "loss.eikonal=0",
    "loss.normal=0",
    "data.sampling.mode=pool",
    "data.sampling.batch_size=4096",
    "data.sampling.steps_per_epoch=50",
    "data.sampling.fractions={surface:0.2,near:0.6,uniform:0.2}",
    "trainer.max_epochs=300",
    "trainer.check_val_every_n_epoch=25",
)
VIEW = (28.0, -52.0)  # (elevation, azimuth) degrees: the upright's face, the rib's side, the holes
CLOSE_UP = ((0.16, -0.015, -0.2), 0.075)  # around the rib's top edge where it meets the base plate
SLICE_AXIS, SLICE_VALUE = 1, 0.0  # the plane y = 0 cuts the L profile and the rib
N_SAMPLES = 50_000  # area-weighted samples per mesh
N_TRUE = 300_000  # samples of the true surface
TRUE_SAMPLE_RES = 160  # marching cubes of the analytic SDF whose samples are projected onto the true surface
TRUE_DISPLAY_RES = 192  # marching cubes of the analytic SDF, for the picture of the true shape only


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``train.yaml`` composed with ``experiment=default`` and ``overrides``.

    Parameters
    ----------
    overrides : sequence of str, optional
        Hydra overrides, e.g. ``["data=bracket", "trainer.max_epochs=4"]``.

    Returns
    -------
    DictConfig
        The composed training configuration (not resolved).

    Examples
    --------
    >>> from nsr.demo import compose_train
    >>> cfg = compose_train(["data=bracket", "trainer.max_epochs=4"])
    >>> cfg.data.kind, cfg.data.shape._target_, cfg.trainer.max_epochs
    ('analytic', 'nsr.training.shapes.bracket', 4)
    """
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=default", *overrides])


def train_default(out: Path, overrides: Sequence[str] = ()) -> Path:
    """Train the default experiment with ``overrides`` into ``out/train``.

    The training run's own mesh export is switched off: the demo extracts it next.

    Parameters
    ----------
    out : Path
        The demo's output folder; the run goes to ``out / "train"``.
    overrides : sequence of str, optional
        Hydra overrides of ``train.yaml`` (after the demo's own, :data:`DEMO_OVERRIDES`, in
        :func:`run_demo`).

    Returns
    -------
    Path
        The run directory, with ``checkpoints/last.ckpt`` and ``config.yaml``.

    Examples
    --------
    Training takes minutes, so this example is not run:

    >>> from pathlib import Path
    >>> from nsr.demo import DEMO_OVERRIDES, train_default
    >>> run = train_default(Path("outputs/demo/mine"), [*DEMO_OVERRIDES, "trainer.max_epochs=4"])  # doctest: +SKIP
    >>> (run / "checkpoints" / "last.ckpt").is_file()  # doctest: +SKIP
    True
    """
    from nsr.train import train

    cfg = compose_train(["extract=none", "logger=none", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(out / "train")
    return Path(train(cfg))


def true_shape(run_dir: Path) -> Any:
    """The analytic shape a run was trained on, read from its ``config.yaml``.

    Parameters
    ----------
    run_dir : Path
        A training run directory.

    Returns
    -------
    nsr.training.shapes.Shape or None
        The shape of ``data.shape`` when ``data.kind`` is ``analytic``, else ``None`` (meshes and
        point clouds have no exact SDF).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from omegaconf import OmegaConf
    >>> from nsr.demo import true_shape
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     cfg = {"data": {"kind": "analytic", "shape": {"_target_": "nsr.training.shapes.Sphere", "radius": 0.3}}}
    ...     OmegaConf.save(cfg, Path(tmp) / "config.yaml")
    ...     shape = true_shape(Path(tmp))
    >>> type(shape).__name__, shape.radius
    ('Sphere', 0.3)
    """
    import hydra

    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.data.get("kind") != "analytic" or cfg.data.get("shape") is None:
        return None
    return hydra.utils.instantiate(cfg.data.shape)


def _samples(mesh: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    from nsr.eval.metrics import sample_faces

    return sample_faces(mesh, n, seed=0)


def against_truth(mesh: Any, shape: Any, truth: np.ndarray, n: int = N_SAMPLES) -> dict[str, float]:
    """A triangle mesh against the true shape: ``|SDF|`` at ``n`` area-weighted samples, and
    Chamfer-L1 / Hausdorff with ``truth`` ``(M, 3)`` (points on the true surface).

    Mesh -> truth: distance to the nearest of all ``truth`` points (an upper bound, within the
    sampling floor, :func:`sampling_floor`); truth -> mesh: exact point-to-triangle distance from
    ``n`` of them. Box units.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Triangle mesh, vertices ``(V, 3)``, faces ``(F, 3)``.
    shape : nsr.training.shapes.Shape
        The true shape (a callable ``(N, 3) ndarray -> (N,)``).
    truth : (M, 3) float ndarray
        Points on the true surface, in random order (e.g. :func:`nsr.training.shapes.surface_samples`).
    n : int, optional
        Area-weighted samples of ``mesh``.

    Returns
    -------
    dict of str to float
        ``true_abs_sdf_mean``, ``true_abs_sdf_max`` (``|SDF|`` at the mesh samples),
        ``true_chamfer_l1``, ``true_hausdorff``; NaN for an empty mesh.

    Examples
    --------
    The true shape's own mesh: ``|SDF|`` is 0 on it, and its Chamfer distance is the sampling floor's order:

    >>> import trimesh
    >>> from nsr.demo import against_truth, sampling_floor
    >>> from nsr.training.shapes import Box, surface_samples
    >>> cube = Box(0.25)
    >>> pts = surface_samples(cube, 3000, resolution=24)
    >>> d = against_truth(trimesh.creation.box(extents=(0.5, 0.5, 0.5)), cube, pts[:2000], n=1000)
    >>> d["true_abs_sdf_max"] < 1e-12, d["true_chamfer_l1"] < 2 * sampling_floor(pts[:2000], pts[2000:])
    (True, True)
    """
    from scipy.spatial import cKDTree

    from nsr.eval.metrics import surface_distance

    p, fp = _samples(mesh, n)
    if len(p) == 0:
        return {"true_abs_sdf_mean": float("nan"), "true_abs_sdf_max": float("nan"),
                "true_chamfer_l1": float("nan"), "true_hausdorff": float("nan")}  # fmt: skip
    sdf = np.abs(shape(p))
    d_mt, _ = cKDTree(truth).query(p, workers=-1)
    d_tm, _ = surface_distance(truth[:n], mesh, p, fp)  # truth is in random order
    return {"true_abs_sdf_mean": float(sdf.mean()), "true_abs_sdf_max": float(sdf.max()),
            "true_chamfer_l1": float(0.5 * (d_mt.mean() + d_tm.mean())),
            "true_hausdorff": float(max(d_mt.max(), d_tm.max()))}  # fmt: skip


def sampling_floor(truth: np.ndarray, fresh: np.ndarray) -> float:
    """Mean distance from ``fresh`` true-surface samples to ``truth``: what a perfect mesh would
    score on the mesh -> truth half of the Chamfer distance (box units).

    Parameters
    ----------
    truth : (M, 3) float ndarray
        The reference points on the true surface.
    fresh : (K, 3) float ndarray
        Other points on the true surface, drawn independently of ``truth``.

    Returns
    -------
    float
        Mean nearest-neighbour distance from ``fresh`` to ``truth``.

    Examples
    --------
    A grid of spacing 0.1 on a plane, and the points halfway between its nodes (0.05 * sqrt(2) away):

    >>> import numpy as np
    >>> from nsr.demo import sampling_floor
    >>> u = np.arange(10) * 0.1
    >>> grid = np.stack(np.meshgrid(u, u, [0.0]), -1).reshape(-1, 3)
    >>> round(sampling_floor(grid, grid[:5] + [0.05, 0.05, 0.0]), 6), round(0.05 * 2**0.5, 6)
    (0.070711, 0.070711)
    """
    from scipy.spatial import cKDTree

    return float(cKDTree(truth).query(fresh, workers=-1)[0].mean())


def measure(mesh: Any, net: Any, shape: Any, truth: np.ndarray | None, exact: Any | None) -> dict[str, Any]:
    """All the demo's numbers for one triangle mesh (see the module docstring).

    Parameters
    ----------
    mesh : trimesh.Trimesh
        The mesh, vertices ``(V, 3)``, faces ``(F, 3)``.
    net : network
        The network it meshes (a :class:`nsr.pl.PLGraph`, or anything :func:`nsr.pl.as_graph` reads).
    shape : nsr.training.shapes.Shape or None
        The true shape; ``None`` skips the true-shape columns.
    truth : (M, 3) float ndarray or None
        Points on the true surface (see :func:`against_truth`).
    exact : trimesh.Trimesh or None
        The exact mesh; ``None`` skips the ``exact_*`` columns.

    Returns
    -------
    dict of str to Any
        ``n_faces``, ``n_vertices``, ``watertight``, the ``abs_f_*`` residuals of
        :func:`nsr.eval.metrics.residuals` (network output units) and, where given, the
        ``true_*`` (:func:`against_truth`) and ``exact_chamfer_l1`` / ``exact_hausdorff`` (box units).

    Examples
    --------
    Marching cubes of the octahedron ``|x| + |y| + |z| = 0.5``, whose grid nodes at spacing
    1/8 lie on the octahedron's planes, so that every vertex is on the zero set:

    >>> from nsr.demo import measure
    >>> from nsr.eval.marching_cubes import marching_cubes
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)
    >>> row = measure(marching_cubes(net, (-1, 1), 17), net, None, None, None)
    >>> row["n_faces"], row["watertight"], row["abs_f_vertices_max"]
    (488, True, 0.0)
    """
    from nsr.eval.metrics import compare_meshes, residuals

    row: dict[str, Any] = {"n_faces": int(len(mesh.faces)), "n_vertices": int(len(mesh.vertices))}
    row |= residuals(net, mesh, N_SAMPLES)
    row["watertight"] = bool(mesh.is_watertight) if len(mesh.faces) else False
    if shape is not None and truth is not None:
        row |= against_truth(mesh, shape, truth)
    if exact is not None:
        m = compare_meshes(mesh, exact, N_SAMPLES)
        row |= {"exact_chamfer_l1": m["chamfer_l1"], "exact_hausdorff": m["hausdorff"]}
    return row


def _fmt(v: Any, f: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, f)


TABLE = [  # (key, header, format)
    ("time_s", "time s", ".2f"), ("n_faces", "triangles", "d"), ("abs_f_vertices_max", "max|f| verts", ".1e"),
    ("abs_f_samples_mean", "mean|f| samples", ".1e"), ("true_abs_sdf_mean", "mean|SDF| true", ".2e"),
    ("true_chamfer_l1", "CD-L1 true", ".2e"), ("true_hausdorff", "Hausdorff true", ".2e"),
    ("exact_chamfer_l1", "CD-L1 exact", ".2e"),
]  # fmt: skip


def summary_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The comparison rows as a fixed-width (or Markdown) table; one time per method.

    Parameters
    ----------
    rows : sequence of dict
        One dict per mesh with ``name`` and any of the :data:`TABLE` keys (missing or NaN: ``-``).
    markdown : bool, optional
        A Markdown table instead of fixed-width text.

    Returns
    -------
    str
        The table.

    Examples
    --------
    >>> from nsr.demo import summary_table
    >>> print(summary_table([{"name": "exact", "time_s": 1.5, "n_faces": 8}], markdown=True).splitlines()[2])
    | exact | 1.50 | 8 | - | - | - | - | - | - |
    """
    heads = ["mesh"] + [h for _, h, _ in TABLE]
    cells = [[r["name"]] + [_fmt(r.get(k), f) for k, _, f in TABLE] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"
    widths = [max(len(h), *(len(c[i]) for c in cells)) + 2 for i, h in enumerate(heads)]
    line = lambda row: row[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(row[1:], widths[1:]))  # noqa: E731
    return "\n".join([line(heads), "-" * sum(widths)] + [line(c) for c in cells])


LEGEND = """\
time s: wall time of the extraction (measured once, here and everywhere below);
|f|: the network's value, in network output units (0 on its exact surface);
|SDF| true, CD-L1 true, Hausdorff true: against the true shape, in box units (the box is 1 wide);
CD-L1 exact: against the network's exact surface, in box units."""


FOOTNOTE = ("|f|: the network's value at a mesh's vertices, 0 on the network's own surface (network output units).   "
            "CD-L1: mean Chamfer distance, box units (the box is 1 wide).")


def _caption(row: dict[str, Any], lines: Sequence[str]) -> str:
    return "\n".join(lines).format(**{k: (v if v is not None else float("nan")) for k, v in row.items()})


def _pictures(out: Path, net: Any, shape: Any, box: np.ndarray, exact: Any, exact_row: dict, mcs: list,
              mc_rows: list, floor: float | None) -> list[Path]:  # fmt: skip
    import trimesh

    from nsr.eval import render
    from nsr.eval.metrics import sample_faces, surface_distance
    from nsr.training.shapes import Shape

    files: list[Path | None] = []
    pick = min(range(len(mcs)), key=lambda i: abs(mcs[i][0] - 64))  # the 64^3 mesh, or the nearest
    res, mc = mcs[pick]
    mrow = mc_rows[pick]
    exact_tm = exact.to_trimesh()
    meshes, titles, captions, outlines = [], [], [], []
    if isinstance(shape, Shape):
        from nsr.eval.marching_cubes import marching_cubes

        ref = marching_cubes(shape, box, TRUE_DISPLAY_RES)
        meshes.append((np.asarray(ref.vertices), np.asarray(ref.faces)))
        titles.append("true shape (analytic SDF)")
        captions.append(f"what the network was trained on\n(drawn by marching cubes {TRUE_DISPLAY_RES}³ of the\n"
                        "analytic SDF: its steps along the rib\nare the drawing's, not the shape's)")
        outlines.append(False)
    meshes += [(exact.vertices, exact.polygons), (np.asarray(mc.vertices), np.asarray(mc.faces))]
    titles += ["exact mesh of the network (nsr)", f"marching cubes {res}³ of the network"]
    captions += [
        _caption(exact_row, [f"{len(exact.polygons)} planar polygons, {{time_s:.1f}} s",
                             "max |f| at vertices {abs_f_vertices_max:.0e}",
                             "to the true shape: CD-L1 {true_chamfer_l1:.1e}"]),
        _caption(mrow, ["{n_faces} triangles, {time_s:.1f} s", "max |f| at vertices {abs_f_vertices_max:.0e}",
                        "to the true shape: CD-L1 {true_chamfer_l1:.1e}",
                        "to the exact mesh: CD-L1 {exact_chamfer_l1:.1e}"]),
    ]  # fmt: skip
    outlines += [True, False]
    files.append(render.render_overview(
        meshes, titles, captions, out / "overview.png", CLOSE_UP, VIEW, outlines=outlines, footnote=FOOTNOTE,
        title="The same network, two meshes; bottom: close-ups of the red box (the rib's edge on the base)"))
    files.append(render.render_polygons(
        exact.vertices, exact.polygons, out / "exact_polygons.png", VIEW, zoom=CLOSE_UP,
        title=f"The exact mesh is made of {len(exact.polygons)} planar polygons, one per linear region it "
              "crosses;\nedges shown only where visible (hidden lines removed); right: close-up"))  # fmt: skip
    ps, pf = sample_faces(exact_tm, N_SAMPLES, seed=0)
    dist, _ = surface_distance(np.asarray(mc.triangles_center), exact_tm, ps, pf)
    files.append(render.render_colored_mesh(
        mc, dist, out / "mc_error.png", "distance to the exact surface (box units; box is 1 wide)", VIEW,
        title=f"Marching cubes {res}³ of the network, each triangle colored by how far its centre lies from\n"
              f"the network's exact surface: mean {dist.mean():.1e}, max {dist.max():.1e} box units"))  # fmt: skip
    names = "xyz"
    plane = f"{names[SLICE_AXIS]}{SLICE_VALUE:g}"
    normal = np.eye(3)[SLICE_AXIS]
    others = [i for i in range(3) if i != SLICE_AXIS]
    cut = trimesh.intersections.mesh_plane(exact_tm, normal, normal * SLICE_VALUE)
    true_sdf = shape if isinstance(shape, Shape) else None
    files.append(render.render_slice(
        net, box, SLICE_AXIS, SLICE_VALUE, out / f"slice_{plane}.png", segments=cut[:, :, others], true_sdf=true_sdf,
        title=f"The network's value f on the plane {names[SLICE_AXIS]} = {SLICE_VALUE:g} (a cut through the L "
              "and the rib):\nwhere f = 0 is its surface; dashed: the bracket it was trained on"))  # fmt: skip
    files.append(render.render_slice_regions(
        net, box, SLICE_AXIS, SLICE_VALUE, out / f"regions_{plane}.png", true_sdf=true_sdf,
        title=f"The network on the plane {names[SLICE_AXIS]} = {SLICE_VALUE:g}: its linear regions (thin lines),\n"
              "its value (color) and its exact zero level set (bold)"))  # fmt: skip
    files.append(_error_plot(out, mcs, mc_rows, exact_row, floor))
    return [f for f in files if f]


def _error_plot(out: Path, mcs: list, mc_rows: list, exact_row: dict, floor: float | None) -> Path | None:
    from nsr.eval import render

    x = [r for r, _ in mcs]
    dist = {"marching cubes: CD-L1 to the exact mesh": [r["exact_chamfer_l1"] for r in mc_rows]}
    lines: dict[str, float] = {}
    if "true_chamfer_l1" in exact_row:
        dist["marching cubes: CD-L1 to the true shape"] = [r["true_chamfer_l1"] for r in mc_rows]
        lines["exact mesh: CD-L1 to the true shape"] = exact_row["true_chamfer_l1"]
        if floor:
            lines["sampling floor of the true-shape reference"] = floor
    res = {"marching cubes: mean |f| at samples": [r["abs_f_samples_mean"] for r in mc_rows],
           "marching cubes: max |f| at vertices": [r["abs_f_vertices_max"] for r in mc_rows]}  # fmt: skip
    rlines = {"exact mesh: mean |f| at samples": exact_row["abs_f_samples_mean"],
              "exact mesh: max |f| at vertices": exact_row["abs_f_vertices_max"]}  # fmt: skip
    return render.plot_errors(x, dist, res, out / "error_vs_resolution.png", distance_lines=lines,
                              residual_lines=rlines,
                              title="Marching cubes against resolution; dashed: the exact mesh "
                                    "(and, left, the sampling floor of the true-shape reference)")


def run_demo(out: Path, resolutions: Sequence[int] = DEMO_RESOLUTIONS, overrides: Sequence[str] = (),
             pictures: bool = True, run_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Train, extract, mesh, measure, render into ``out``.

    Parameters
    ----------
    out : Path
        Output folder (created).
    resolutions : sequence of int, optional
        Marching-cubes samples per axis.
    overrides : sequence of str, optional
        ``train.yaml`` overrides after :data:`DEMO_OVERRIDES`.
    pictures : bool, optional
        Render the PNG pictures.
    run_dir : Path, optional
        An existing training run to use instead of training (``overrides`` then unused).

    Returns
    -------
    dict
        ``rows`` (one per mesh, see :func:`measure`), ``timings`` (seconds), ``files`` (every
        output), ``run_dir``, ``bounds`` ``(3, 2)``, ``true_shape``, ``sampling_floor``,
        ``extract``, ``overrides``; also written to ``out / "summary.json"``.

    Examples
    --------
    Training and measuring take minutes, so this example is not run:

    >>> from pathlib import Path
    >>> from nsr.demo import report, run_demo
    >>> result = run_demo(Path("outputs/demo/quick"), (32, 64), ["trainer.max_epochs=10"])  # doctest: +SKIP
    >>> print(report(result, wall_s=60.0))  # doctest: +SKIP
    """
    import torch

    from nsr.eval.marching_cubes import as_bounds, marching_cubes
    from nsr.extract import _run_box, write_json
    from nsr.extraction.surface import extract_mesh
    from nsr.networks import load_network
    from nsr.pl.graph import as_graph
    from nsr.training.shapes import surface_samples

    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if run_dir is None:
        run_dir = train_default(out, [*DEMO_OVERRIDES, *overrides])
        timings["train_s"] = time.perf_counter() - t
    run_dir = Path(run_dir)
    # any network nsr trains (a grid network too), in the one form every stage reads, float64
    net = as_graph(load_network(run_dir / "checkpoints" / "last.ckpt")).to(dtype=torch.float64)
    box = as_bounds(_run_box(run_dir) or (-0.5, 0.5), 3)
    shape = true_shape(run_dir)

    t = time.perf_counter()
    exact = extract_mesh(net, box, mode="auto", progress=False)  # as nsr-extract: track for a grid network
    exact_s = time.perf_counter() - t  # the one measurement of the extraction
    files = [exact.export(out / "exact_polygons.obj", polygons=True), exact.export(out / "exact.ply")]
    mcs = []
    mc_times = []
    for res in resolutions:
        t = time.perf_counter()
        mcs.append((int(res), marching_cubes(net, box, int(res))))
        mc_times.append(time.perf_counter() - t)
        mc_path = out / f"marching_cubes_{res}.ply"
        if len(mcs[-1][1].faces):
            mcs[-1][1].export(mc_path)
            files.append(mc_path)

    t = time.perf_counter()
    truth, floor = None, None
    if shape is not None:  # one draw: the reference and, apart from it, fresh points for its floor
        pts = surface_samples(shape, N_TRUE + N_TRUE // 10, box, TRUE_SAMPLE_RES)
        truth, floor = pts[: N_TRUE], sampling_floor(pts[: N_TRUE], pts[N_TRUE:])
    exact_tm = exact.to_trimesh()
    exact_row = {"name": "exact (nsr)", "time_s": exact_s} | measure(exact_tm, net, shape, truth, None)
    exact_row["n_polygons"] = len(exact.polygons)
    exact_row["mode"] = exact.stats["mode"]
    mc_rows = [{"name": f"marching cubes {r}³", "resolution": r, "time_s": s} | measure(m, net, shape, truth, exact_tm)
               for (r, m), s in zip(mcs, mc_times)]  # fmt: skip
    timings["measure_s"] = time.perf_counter() - t
    if pictures:
        t = time.perf_counter()
        files += _pictures(out, net, shape, box, exact, exact_row, mcs, mc_rows, floor)
        timings["pictures_s"] = time.perf_counter() - t
    rows = [exact_row, *mc_rows]
    extract = {k: exact_row.get(k) for k in ("n_vertices", "n_polygons", "abs_f_vertices_max", "time_s", "mode")}
    result = {"run_dir": str(run_dir), "bounds": box.tolist(), "rows": rows, "timings": timings,
              "true_shape": type(shape).__name__ if shape is not None else None, "sampling_floor": floor,
              "extract": extract, "overrides": [*DEMO_OVERRIDES, *overrides]}  # fmt: skip
    (out / "summary.md").write_text(summary_table(rows, markdown=True) + "\n" + LEGEND + "\n")
    files.append(out / "summary.md")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result["files"] = [str(ckpt)] + [str(f) for f in files] + [str(out / "summary.json")]
    write_json(result, out / "summary.json")
    return result


def report(result: dict[str, Any], wall_s: float) -> str:
    """What the demo prints: the table, what it means, the other timings, the outputs.

    Parameters
    ----------
    result : dict
        What :func:`run_demo` returns.
    wall_s : float
        The demo's total wall time, seconds.

    Returns
    -------
    str
        The text to print.

    Examples
    --------
    >>> from nsr.demo import report
    >>> rows = [{"name": "exact (nsr)", "time_s": 2.0, "abs_f_vertices_max": 3e-16},
    ...         {"name": "marching cubes 64³", "time_s": 0.4, "abs_f_vertices_max": 5e-3}]
    >>> text = report({"rows": rows, "timings": {"measure_s": 1.0}, "files": ["out/summary.md"]}, 9.0)
    >>> print(text.splitlines()[-5])
    The exact mesh's vertices are on the network's zero set to 3e-16; marching cubes' to 5e-03 at best.
    """
    rows, t = result["rows"], result["timings"]
    exact, mcs = rows[0], rows[1:]
    lines = ["", ("nsr demo: a ReLU network trained on nsr.training.shapes.bracket; "
                 "its exact mesh vs marching cubes"), "",
             summary_table(rows), "", LEGEND, ""]  # fmt: skip
    if "true_chamfer_l1" in exact and mcs:
        best = min(mcs, key=lambda r: r["true_chamfer_l1"])
        lines.append(f"Against the true shape the exact mesh is within {exact['true_chamfer_l1']:.2e} (CD-L1); the "
                     f"best marching cubes ({best['name']}) {best['true_chamfer_l1']:.2e}.")
        lines.append(f"(reference: {N_TRUE} points on the true surface; sampling floor {result['sampling_floor']:.1e})")
    lines.append(f"The exact mesh's vertices are on the network's zero set to {exact['abs_f_vertices_max']:.0e}; "
                 f"marching cubes' to {min(r['abs_f_vertices_max'] for r in mcs):.0e} at best." if mcs else "")
    trained = f"train {t['train_s']:.1f} s, " if "train_s" in t else ""
    lines.append(f"\n{trained}measuring {t['measure_s']:.1f} s"
                 + (f", pictures {t['pictures_s']:.1f} s" if "pictures_s" in t else "")
                 + f"; demo total {wall_s:.0f} s\noutputs:")  # fmt: skip
    lines += [f"  {f}" for f in result["files"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nsr.demo [--out DIR] [--resolutions 32 64 128] [--net RUN] [overrides...]``.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments; default ``sys.argv[1:]``.

    Examples
    --------
    The whole demo takes a few minutes, so this example is not run:

    >>> from nsr.demo import main
    >>> main(["--out", "outputs/demo/quick", "--resolutions", "32", "64", "trainer.max_epochs=10"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=f"outputs/demo/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(DEMO_RESOLUTIONS))
    parser.add_argument("--net", default=None, help="a training run directory to reuse instead of training")
    parser.add_argument("--gallery", default=None, help="also write small copies of the pictures here (docs/gallery)")
    parser.add_argument("overrides", nargs="*", help="train.yaml overrides (trainer.max_epochs=4)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    result = run_demo(Path(args.out).resolve(), args.resolutions, args.overrides, run_dir=args.net)
    print(report(result, time.perf_counter() - t0))
    if args.gallery:
        from nsr.eval.render import compact_png

        for f in result["files"]:
            if f.endswith(".png"):
                print(f"  {compact_png(f, Path(args.gallery) / Path(f).name)}")


if __name__ == "__main__":
    main()
