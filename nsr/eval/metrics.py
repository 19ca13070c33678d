"""Mesh comparison metrics, built on :class:`scipy.spatial.cKDTree` (no Python loops over points).

Conventions (every distance is in world units). Each mesh is sampled (area-weighted, the
same seed for both); ``d(p, R)`` is the distance from a sample ``p`` of one mesh to the
*surface* of the other, computed exactly against candidate triangles: those under the 4
nearest samples and the 4 with the nearest centroids of the other mesh (cKDTree queries,
then vectorized point-triangle distances). This
removes the sampling floor of plain point-to-point Chamfer (about half the sample spacing,
~2e-3 for 1e5 samples on a unit-size shape), which would hide marching-cubes errors.

* **Chamfer-L1** (Occupancy Networks style): ``0.5 * (mean_p d(p, R) + mean_r d(r, P))``,
  the mean of both directions of the mean Euclidean distance.
* **Chamfer-L2**: ``0.5 * (mean_p d(p, R)^2 + mean_r d(r, P)^2)``, mean *squared* distances.
* **Normal consistency**: mean over both directions of ``|n_p . n_closest|`` (normal of the
  sampled face against the normal of the closest face found; orientation-free, 1 is perfect).
* **F-score at tau**: harmonic mean of precision (fraction of predicted samples within tau of
  the reference surface) and recall (the converse). ``tau`` is a fraction (0.5 % and 1 %) of the
  **diagonal of the reference surface's axis-aligned bounding box** (of the vertices its faces
  use: stray vertices do not count).
* **Hausdorff**: the symmetric maximum of the sample-to-surface distances (a lower bound
  of the true Hausdorff distance, tight up to the sample spacing).
* **Triangle quality**: minimum interior angle of each triangle in degrees, reported as
  percentiles (1, 5, 50) and the minimum.
* **|f|**: absolute network value at the mesh vertices and at the area-weighted samples.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

F_THRESHOLDS = (0.005, 0.01)
ANGLE_PERCENTILES = (1, 5, 50)


def sample_faces(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted random points on a mesh, and the face each lies on.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        The surface, vertices ``(V, 3)``, faces ``(F, 3)``.
    n : int
        Number of samples.
    seed : int
        Seed of the sampler (the same seed samples two meshes alike).

    Returns
    -------
    points : (n, 3) float64 ndarray
        The samples; ``(0, 3)`` for an empty or zero-area mesh.
    face_index : (n,) int64 ndarray
        The face of each sample.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import sample_faces
    >>> points, face_index = sample_faces(trimesh.creation.box(), 5, seed=0)
    >>> points.shape, face_index.shape
    ((5, 3), (5,))
    """
    if mesh.is_empty or len(mesh.faces) == 0 or mesh.area <= 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    points, face_index = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(points, dtype=np.float64), np.asarray(face_index, dtype=np.int64)


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted random points on a mesh, with the unit normals of their faces.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        The surface.
    n : int
        Number of samples.
    seed : int
        Seed of the sampler.

    Returns
    -------
    points : (n, 3) float64 ndarray
        The samples (see :func:`sample_faces`).
    normals : (n, 3) float64 ndarray
        Unit normal of the face under each sample.

    Examples
    --------
    >>> import numpy as np, trimesh
    >>> from nsr.eval.metrics import sample_surface
    >>> points, normals = sample_surface(trimesh.creation.box(), 5, seed=0)
    >>> np.linalg.norm(normals, axis=1).round(6)
    array([1., 1., 1., 1., 1.])
    """
    points, face_index = sample_faces(mesh, n, seed)
    normals = np.asarray(mesh.face_normals)[face_index] if len(points) else np.zeros((0, 3))
    return points, normals


def nearest(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ``dst`` point of each ``src`` point (a k-d tree query).

    Parameters
    ----------
    src : (N, 3) float ndarray
        Query points.
    dst : (M, 3) float ndarray
        Candidate points.

    Returns
    -------
    dist : (N,) float ndarray
        Euclidean distance to the nearest ``dst`` point.
    idx : (N,) int ndarray
        Its index in ``dst``.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.metrics import nearest
    >>> nearest(np.array([[0.0, 0, 0], [2, 0, 0]]), np.array([[1.0, 0, 0], [0, 0, 0.5]]))
    (array([0.5, 1. ]), array([1, 0]))
    """
    dist, idx = cKDTree(dst).query(src, k=1, workers=-1)
    return dist, idx


def surface_distance(
    points: np.ndarray, mesh: trimesh.Trimesh, samples: np.ndarray, faces: np.ndarray, k: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from ``points`` ``(N, 3)`` to the surface of ``mesh``, and the closest face.

    Candidate triangles: the faces ``faces`` ``(M,)`` of the ``k`` nearest ``samples``
    ``(M, 3)`` of ``mesh`` (finds large triangles) and the ``k`` faces with the nearest
    centroids (finds small ones). The distance to each candidate is exact, and never exceeds
    the distance to the nearest sample (on the surface: identical meshes give exactly zero).

    Parameters
    ----------
    points : (N, 3) float ndarray
        Query points.
    mesh : trimesh.Trimesh
        The surface measured against.
    samples : (M, 3) float ndarray
        Samples of ``mesh`` (from :func:`sample_faces`).
    faces : (M,) int ndarray
        The face of ``mesh`` under each sample.
    k : int
        Candidates taken from each of the two k-d tree queries.

    Returns
    -------
    distance : (N,) float ndarray
        Distance to the closest candidate triangle (an upper bound of the true distance).
    face : (N,) int ndarray
        That triangle's index in ``mesh.faces``.

    Examples
    --------
    >>> import numpy as np, trimesh
    >>> from nsr.eval.metrics import sample_faces, surface_distance
    >>> box = trimesh.creation.box(extents=(1, 1, 1))
    >>> samples, faces = sample_faces(box, 1000, seed=0)
    >>> d, f = surface_distance(np.array([[0.0, 0, 0], [2, 0, 0]]), box, samples, faces)
    >>> d.round(6)
    array([0.5, 1.5])
    """
    n, k1 = len(points), min(k, len(samples))
    k2 = min(k, len(mesh.faces))
    nn, idx = cKDTree(samples).query(points, k=k1, workers=-1)
    _, cidx = cKDTree(np.asarray(mesh.triangles_center)).query(points, k=k2, workers=-1)
    cand = np.hstack([faces[idx.reshape(n, k1)], cidx.reshape(n, k2)])  # (N, k1 + k2)
    tris = np.asarray(mesh.triangles)[cand.ravel()]
    pts = np.repeat(points, cand.shape[1], axis=0)
    closest = trimesh.triangles.closest_point(tris, pts)
    d = np.linalg.norm(closest - pts, axis=1).reshape(n, -1)
    best = d.argmin(1)
    rows = np.arange(n)
    d_best, f_best = d[rows, best], cand[rows, best]
    nn0 = nn.reshape(n, k1)[:, 0]
    use_nn = nn0 < d_best
    d_best[use_nn], f_best[use_nn] = nn0[use_nn], cand[use_nn, 0]
    return d_best, f_best


def chamfer(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Point-to-point Chamfer-L1/L2, Hausdorff, accuracy, completeness of two point sets.

    Parameters
    ----------
    pred : (N, 3) float ndarray
        Predicted points.
    ref : (M, 3) float ndarray
        Reference points.

    Returns
    -------
    dict of str to float
        ``accuracy`` (mean pred-to-ref distance), ``completeness`` (mean ref-to-pred),
        ``chamfer_l1``, ``chamfer_l2`` and ``hausdorff`` (module docstring conventions).

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.metrics import chamfer
    >>> chamfer(np.zeros((1, 3)), np.array([[1.0, 0, 0], [0, 2.0, 0]]))["chamfer_l1"]
    1.25
    """
    d_pr, _ = nearest(pred, ref)
    d_rp, _ = nearest(ref, pred)
    return _chamfer_from(d_pr, d_rp)


def _chamfer_from(d_pr: np.ndarray, d_rp: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(d_pr.mean()),
        "completeness": float(d_rp.mean()),
        "chamfer_l1": float(0.5 * (d_pr.mean() + d_rp.mean())),
        "chamfer_l2": float(0.5 * ((d_pr**2).mean() + (d_rp**2).mean())),
        "hausdorff": float(max(d_pr.max(), d_rp.max())),
    }


def f_score(d_pr: np.ndarray, d_rp: np.ndarray, tau: float) -> float:
    """F-score at distance ``tau`` from the two directions' nearest distances.

    Parameters
    ----------
    d_pr : (N,) float ndarray
        Distance from each predicted sample to the reference.
    d_rp : (M,) float ndarray
        Distance from each reference sample to the prediction.
    tau : float
        Distance threshold, world units.

    Returns
    -------
    float
        Harmonic mean of precision ``mean(d_pr <= tau)`` and recall ``mean(d_rp <= tau)``;
        0 when both are 0.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.metrics import f_score
    >>> round(f_score(np.array([0.0, 0.2]), np.array([0.0, 0.0, 0.0]), tau=0.1), 4)  # P = 0.5, R = 1
    0.6667
    """
    precision, recall = float((d_pr <= tau).mean()), float((d_rp <= tau).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def normal_consistency(
    n_pred: np.ndarray, n_ref: np.ndarray, m_pr: np.ndarray, m_rp: np.ndarray
) -> float:
    """Mean ``|cos|`` of paired unit normals, averaged over both directions.

    Parameters
    ----------
    n_pred : (N, 3) float ndarray
        Normals at the predicted samples.
    n_ref : (M, 3) float ndarray
        Normals at the reference samples.
    m_pr : (N, 3) float ndarray
        Normal of the reference face matched to each predicted sample.
    m_rp : (M, 3) float ndarray
        Normal of the predicted face matched to each reference sample.

    Returns
    -------
    float
        In ``[0, 1]``; 1 when every pair is parallel or anti-parallel.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.metrics import normal_consistency
    >>> z, x = np.array([[0.0, 0, 1]]), np.array([[1.0, 0, 0]])
    >>> normal_consistency(z, z, -z, x)  # one direction agrees, the other is orthogonal
    0.5
    """
    c_pr = np.abs((n_pred * m_pr).sum(1))
    c_rp = np.abs((n_ref * m_rp).sum(1))
    return float(0.5 * (c_pr.mean() + c_rp.mean()))


def triangle_min_angles(mesh: trimesh.Trimesh) -> np.ndarray:
    """Minimum interior angle of every triangle.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Triangle mesh with ``F`` faces.

    Returns
    -------
    (F,) float ndarray
        Degrees; degenerate faces give 0.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import triangle_min_angles
    >>> triangle_min_angles(trimesh.creation.box()).round(6)[:3]  # each square split in two
    array([45., 45., 45.])
    """
    if len(mesh.faces) == 0:
        return np.zeros(0)
    angles = np.nan_to_num(np.asarray(mesh.face_angles), nan=0.0)
    return np.degrees(angles.min(axis=1))


def triangle_quality(
    mesh: trimesh.Trimesh, q: Sequence[float] = ANGLE_PERCENTILES
) -> dict[str, float]:
    """Minimum-angle statistics of a triangle mesh.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Triangle mesh.
    q : sequence of float
        Percentiles of the per-triangle minimum angle to report.

    Returns
    -------
    dict of str to float
        ``min_angle_p{q}`` for each percentile and ``min_angle_min``, degrees; NaN for a mesh
        without faces.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import triangle_quality
    >>> {k: round(v, 6) for k, v in triangle_quality(trimesh.creation.box(), q=(50,)).items()}
    {'min_angle_p50': 45.0, 'min_angle_min': 45.0}
    """
    a = triangle_min_angles(mesh)
    if a.size == 0:
        return {f"min_angle_p{p}": float("nan") for p in q} | {"min_angle_min": float("nan")}
    out = {f"min_angle_p{p}": float(v) for p, v in zip(q, np.percentile(a, q))}
    out["min_angle_min"] = float(a.min())
    return out


def abs_values(net: Any, points: np.ndarray, chunk: int = 2**14) -> np.ndarray:
    """Absolute network value at points, in float64 on the CPU.

    Parameters
    ----------
    net : network
        Anything :func:`nsr.networks.as_network` reads.
    points : (N, D) float ndarray
        Points.
    chunk : int
        Points per evaluated chunk.

    Returns
    -------
    (N,) float64 ndarray
        ``|f(points)|``.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.metrics import abs_values
    >>> from nsr.networks import octahedron_network
    >>> abs_values(octahedron_network(0.5), np.array([[0.5, 0, 0], [0, 0, 0], [1, 1, 0]]))
    array([0. , 0.5, 1.5])
    """
    from nsr.pl.graph import as_graph

    pl = as_graph(net).to(device="cpu", dtype=torch.float64)  # any network nsr reads: values of g
    x = torch.as_tensor(np.asarray(points, dtype=np.float64))
    with torch.no_grad():
        parts = [pl(x[i : i + chunk]).abs() for i in range(0, len(x), chunk)]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def residuals(
    net: Any, mesh: trimesh.Trimesh, n_samples: int = 100_000, seed: int = 0
) -> dict[str, float]:
    """How far a mesh is from the network's zero level set: ``|f|`` on it.

    Parameters
    ----------
    net : network
        Anything :func:`nsr.networks.as_network` reads.
    mesh : trimesh.Trimesh
        The mesh, vertices ``(V, 3)``.
    n_samples : int
        Area-weighted samples on the faces.
    seed : int
        Seed of the sampler.

    Returns
    -------
    dict of str to float
        ``abs_f_vertices_mean``, ``abs_f_vertices_max``, ``abs_f_samples_mean``,
        ``abs_f_samples_max``; NaN where there is nothing to measure.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import residuals
    >>> from nsr.networks import octahedron_network
    >>> face = trimesh.Trimesh([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]], [[0, 1, 2]])
    >>> r = residuals(octahedron_network(0.5), face, n_samples=100)
    >>> r["abs_f_vertices_max"] < 1e-12, r["abs_f_samples_max"] < 1e-12  # on |x| + |y| + |z| = 0.5
    (True, True)
    """
    fv = abs_values(net, np.asarray(mesh.vertices))
    fs = abs_values(net, sample_surface(mesh, n_samples, seed)[0])
    return {
        "abs_f_vertices_mean": _stat(fv, np.mean),
        "abs_f_vertices_max": _stat(fv, np.max),
        "abs_f_samples_mean": _stat(fs, np.mean),
        "abs_f_samples_max": _stat(fs, np.max),
    }


def _stat(a: np.ndarray, fn: Any) -> float:
    return float(fn(a)) if a.size else float("nan")


def _nan_distances() -> dict[str, float]:
    keys = ["accuracy", "completeness", "chamfer_l1", "chamfer_l2", "hausdorff"]
    keys.append("normal_consistency")
    return {k: float("nan") for k in keys} | {f"f_score@{t:g}": 0.0 for t in F_THRESHOLDS}


def compare_meshes(
    pred: trimesh.Trimesh,
    ref: trimesh.Trimesh,
    n_samples: int = 100_000,
    seed: int = 0,
    *,
    net: Any = None,
) -> dict[str, float]:
    """All metrics of ``pred`` against ``ref`` (conventions in the module docstring).

    Both meshes are sampled with the same ``seed`` (identical meshes give exactly zero
    distance and F-score 1). F-score thresholds are fractions of ``ref``'s bounding-box
    diagonal. With ``net`` also the ``|f|`` residuals of ``pred``. Empty meshes give NaN
    distances and zero F-scores.

    Parameters
    ----------
    pred : trimesh.Trimesh
        The mesh measured.
    ref : trimesh.Trimesh
        The reference mesh.
    n_samples : int
        Area-weighted samples on each mesh.
    seed : int
        Seed of the sampler, the same for both meshes.
    net : network, optional
        Anything :func:`nsr.networks.as_network` reads; adds :func:`residuals` of ``pred``.

    Returns
    -------
    dict of str to float
        ``n_vertices``, ``n_faces``, ``watertight``, the :func:`triangle_quality` keys,
        ``accuracy``, ``completeness``, ``chamfer_l1``, ``chamfer_l2``, ``hausdorff``,
        ``normal_consistency``, ``f_score@0.005``, ``f_score@0.01`` and, with ``net``, the
        :func:`residuals` keys. Distances are in world units.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import compare_meshes
    >>> ref = trimesh.creation.box(extents=(1, 1, 1))
    >>> pred = trimesh.creation.box(extents=(1.02, 1.02, 1.02))  # every face 0.01 out
    >>> m = compare_meshes(pred, ref, n_samples=2000)
    >>> round(m["chamfer_l1"], 4), m["f_score@0.01"], m["n_faces"]
    (0.01, 1.0, 12)
    >>> compare_meshes(ref, ref, n_samples=2000)["chamfer_l1"]
    0.0
    """
    out: dict[str, float] = {
        "n_vertices": int(len(pred.vertices)),
        "n_faces": int(len(pred.faces)),
        "watertight": bool(pred.is_watertight) if len(pred.faces) else False,
    }
    out |= triangle_quality(pred)
    if net is not None:
        out |= residuals(net, pred, n_samples, seed)
    p, fp = sample_faces(pred, n_samples, seed)
    r, fr = sample_faces(ref, n_samples, seed)
    if len(p) == 0 or len(r) == 0:
        return out | _nan_distances()
    d_pr, c_pr = surface_distance(p, ref, r, fr)
    d_rp, c_rp = surface_distance(r, pred, p, fp)
    out |= _chamfer_from(d_pr, d_rp)
    npred, nref = np.asarray(pred.face_normals), np.asarray(ref.face_normals)
    out["normal_consistency"] = normal_consistency(npred[fp], nref[fr], nref[c_pr], npred[c_rp])
    # the surface's own box: stray (unreferenced) vertices, common in OBJ files, must not widen tau
    used = np.asarray(ref.vertices)[np.unique(np.asarray(ref.faces))]
    diag = float(np.linalg.norm(np.ptp(used, axis=0)))
    for t in F_THRESHOLDS:
        out[f"f_score@{t:g}"] = f_score(d_pr, d_rp, t * diag)
    return out


def unit_cube_pairs(
    pred: trimesh.Trimesh,
    ref: trimesh.Trimesh,
    n_samples: int = 1_000_000,
    seeds: tuple[int, int] = (1, 2),
) -> dict[str, Any]:
    """The matched samples behind :func:`unit_cube_chamfer`: ``n_samples`` area-weighted samples
    on each mesh (``pred`` with ``seeds[0]``, ``ref`` with ``seeds[1]``), moved by the map that
    puts ``ref``'s bounding box (of the vertices its faces use) centred into the unit cube, longest
    side 1, each matched to the nearest sample of the other mesh.

    Parameters
    ----------
    pred, ref : trimesh.Trimesh
        The mesh measured and the reference.
    n_samples : int
        Samples per mesh.
    seeds : (int, int)
        Sampler seeds of ``pred`` and ``ref``.

    Returns
    -------
    dict of str to ndarray or float
        ``centre`` ``(3,)`` and ``scale`` (unit-cube point = ``(x - centre) * scale``); ``pred``
        ``(N, 3)`` and ``ref`` ``(M, 3)`` samples in the unit cube; ``n_pred`` ``(N, 3)`` and
        ``n_ref`` ``(M, 3)`` their faces' normals; ``d_pr``, ``i_pr`` ``(N,)`` the distance to and
        index of each ``pred`` sample's nearest ``ref`` sample, ``d_rp``, ``i_rp`` ``(M,)`` the
        other way (empty where either mesh has no samples).

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import unit_cube_pairs
    >>> ref = trimesh.creation.box(extents=(2, 2, 2))
    >>> pairs = unit_cube_pairs(ref, ref, n_samples=1000)
    >>> pairs["scale"], pairs["pred"].shape, bool(abs(pairs["ref"]).max() <= 0.5 + 1e-12)
    (0.5, (1000, 3), True)
    """
    used = np.asarray(ref.vertices)[np.unique(np.asarray(ref.faces))]
    lo, hi = used.min(0), used.max(0)
    centre, scale = (lo + hi) / 2, 1.0 / float((hi - lo).max())
    p, fp = sample_faces(pred, n_samples, seeds[0])
    r, fr = sample_faces(ref, n_samples, seeds[1])
    p, r = (p - centre) * scale, (r - centre) * scale
    out: dict[str, Any] = {"centre": centre, "scale": scale, "pred": p, "ref": r,
                           "n_pred": np.asarray(pred.face_normals)[fp], "n_ref": np.asarray(ref.face_normals)[fr]}
    if len(p) == 0 or len(r) == 0:
        empty_d, empty_i = np.zeros(0), np.zeros(0, dtype=np.int64)
        return out | {"d_pr": empty_d, "i_pr": empty_i, "d_rp": empty_d, "i_rp": empty_i}
    out["d_pr"], out["i_pr"] = nearest(p, r)
    out["d_rp"], out["i_rp"] = nearest(r, p)
    return out


def unit_cube_chamfer(
    pred: trimesh.Trimesh,
    ref: trimesh.Trimesh,
    n_samples: int = 1_000_000,
    seeds: tuple[int, int] = (1, 2),
) -> dict[str, float]:
    """Point-to-point metrics in the Occupancy Networks convention, in ``ref``'s unit cube.

    Both meshes are moved by the same map that puts ``ref``'s bounding box (of the vertices its
    faces use) centred into the unit cube, longest side 1; ``n_samples`` area-weighted samples
    are drawn on each (``pred`` with ``seeds[0]``, ``ref`` with ``seeds[1]``) and matched to the
    nearest *sample* of the other mesh. Unlike :func:`compare_meshes` (distances to the other
    *surface*), this has a floor: a mesh against itself with two independent samplings scores
    about half the sample spacing (:func:`self_floor`), which is why a result is reported
    together with the reference's own floor at the same sample count.

    Parameters
    ----------
    pred, ref : trimesh.Trimesh
        The mesh measured and the reference.
    n_samples : int
        Samples per mesh.
    seeds : (int, int)
        Sampler seeds of ``pred`` and ``ref`` (different seeds: independent samplings).

    Returns
    -------
    dict of str to float
        ``chamfer_l1`` (mean of both directions' mean distance), ``normal_consistency`` (mean of
        both directions' ``|cos|`` of the matched samples' face normals), ``f_score@0.005`` and
        ``f_score@0.01`` (thresholds: fractions of the unit cube's side), ``n_samples``; NaN
        distances and zero F-scores for an empty ``pred``.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import unit_cube_chamfer
    >>> ref = trimesh.creation.box(extents=(2, 2, 2))
    >>> moved = unit_cube_chamfer(trimesh.creation.box(extents=(2.04, 2.04, 2.04)), ref, n_samples=20_000)
    >>> same = unit_cube_chamfer(ref, ref, n_samples=20_000)  # the floor: half the sample spacing
    >>> same["chamfer_l1"] < 0.01 < moved["chamfer_l1"]  # faces 0.01 out in the unit cube
    True
    """
    m = unit_cube_pairs(pred, ref, n_samples, seeds)
    keys = {"n_samples": float(n_samples)}
    if len(m["pred"]) == 0 or len(m["ref"]) == 0:
        return keys | {"chamfer_l1": float("nan"), "normal_consistency": float("nan")} | {
            f"f_score@{t:g}": 0.0 for t in F_THRESHOLDS}
    d_pr, i_pr, d_rp, i_rp, n_p, n_r = (m[k] for k in ("d_pr", "i_pr", "d_rp", "i_rp", "n_pred", "n_ref"))
    out = keys | {
        "chamfer_l1": float(0.5 * (d_pr.mean() + d_rp.mean())),
        "normal_consistency": normal_consistency(n_p, n_r, n_r[i_pr], n_p[i_rp]),
    }
    for t in F_THRESHOLDS:
        out[f"f_score@{t:g}"] = f_score(d_pr, d_rp, t)
    return out


def self_floor(ref: trimesh.Trimesh, n_samples: int = 1_000_000, seeds: tuple[int, int] = (1, 2)) -> dict[str, float]:
    """:func:`unit_cube_chamfer` of a mesh against itself, two independent samplings: the best
    score any reconstruction can get at this sample count (the metric's floor for this mesh).

    Parameters
    ----------
    ref : trimesh.Trimesh
        The reference mesh.
    n_samples : int
        Samples per sampling (use the count of the measurements it accompanies).
    seeds : (int, int)
        The two samplings' seeds.

    Returns
    -------
    dict of str to float
        As :func:`unit_cube_chamfer`.

    Examples
    --------
    >>> import trimesh
    >>> from nsr.eval.metrics import self_floor
    >>> sphere = trimesh.creation.icosphere(subdivisions=4)
    >>> small, large = self_floor(sphere, 2_000)["chamfer_l1"], self_floor(sphere, 50_000)["chamfer_l1"]
    >>> 0 < large < small  # more samples, lower floor
    True
    """
    return unit_cube_chamfer(ref, ref, n_samples, seeds)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (``getrusage``).

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    >>> from nsr.eval.metrics import max_rss_bytes
    >>> max_rss_bytes() > 0
    True
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@contextlib.contextmanager
def peak_memory(interval: float = 0.005) -> Iterator[dict[str, float]]:
    """Measure the peak resident memory of a block by polling ``/proc/self/statm``.

    Yields a dict filled on exit with ``peak_rss_mb`` (peak resident set during the block),
    ``delta_rss_mb`` (peak minus the resident set at entry) and, on CUDA, ``cuda_peak_mb``.

    Parameters
    ----------
    interval : float
        Polling period, seconds.

    Yields
    ------
    dict of str to float
        Empty inside the block; filled on exit (MiB).

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.metrics import peak_memory
    >>> with peak_memory() as mem:
    ...     block = np.ones(2**20)
    >>> sorted(k for k in mem if k != "cuda_peak_mb"), mem["peak_rss_mb"] > 0
    (['delta_rss_mb', 'peak_rss_mb'], True)
    """
    result: dict[str, float] = {}
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], _rss_bytes())

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak_rss_mb"] = peak[0] / 2**20
        result["delta_rss_mb"] = (peak[0] - base) / 2**20
        if torch.cuda.is_available():
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
