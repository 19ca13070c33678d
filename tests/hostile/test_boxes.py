"""Huge and odd boxes: the same geometry at every scale, or a clear refusal.

A network whose first layer is scaled by ``1/s`` over the box ``s * B`` has exactly the
level set of the original over ``B``, scaled by ``s``: the polygon count must not change
with ``s`` or with the mode, and vertices must match after dividing by ``s``. Boxes on which
a dtype cannot answer must be refused with a message that names the axis and what to do.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nsr import extract_complex, extract_mesh
from nsr.networks import PLNetwork, random_network

F64 = torch.float64


def _base() -> tuple[PLNetwork, float]:
    net = random_network(3, [16, 16], seed=0)
    g = torch.Generator().manual_seed(1)
    level = float(net(torch.rand(4000, 3, generator=g, dtype=F64) * 2 - 1).median())  # crosses the box
    return net, level


def _scaled(net: PLNetwork, s: float) -> PLNetwork:
    return PLNetwork([net.weights[0] / s, *net.weights[1:]], list(net.biases))


def _mesh(net, box, mode, level, dtype="float64"):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on a healthy extraction
        return extract_mesh(net, box, mode=mode, level=level, progress=False, dtype=dtype)


@pytest.mark.parametrize("s", [1e12, 1e15, 1e20, 1e-12])
def test_scaled_boxes_give_the_same_mesh_in_every_mode(s):
    base, level = _base()
    ref = _mesh(base, (-1, 1), "surface", level)
    assert ref.stats["n_polygons"] > 50
    net = _scaled(base, s)
    for mode in ("complex", "surface", "track"):
        mesh = _mesh(net, (-s, s), mode, level)
        assert mesh.stats["n_polygons"] == ref.stats["n_polygons"], mode
        assert mesh.stats["unpaired_face_keys"] == 0 if mode != "track" else True
        got = np.sort(np.round(mesh.vertices / s, 9), axis=0)
        np.testing.assert_allclose(got, np.sort(np.round(ref.vertices, 9), axis=0), atol=1e-8)


def test_float32_huge_box_gives_the_same_count():
    base, level = _base()
    ref = _mesh(base, (-1, 1), "surface", level, "float32")
    for s in (1e15, 1e20):
        mesh = _mesh(_scaled(base, s), (-s, s), "surface", level, "float32")
        assert mesh.stats["n_polygons"] == ref.stats["n_polygons"]


@pytest.mark.parametrize("bounds, match", [
    ((0.5, 0.5), "axis 0 has lo=0.5 >= hi=0.5; every axis needs lo < hi"),
    ((1, -1), "axis 0 has lo=1.0 >= hi=-1.0"),
    ((float("nan"), 1), "NaN or inf.*finite box"),
    ((-float("inf"), 1), "NaN or inf"),
    ([[-1, 1], [-1, 1], [0.2, 0.2]], "axis 2 has lo=0.2 >= hi=0.2"),
    ([[-1, 1]], r"\(3, 2\) array for a 3-D network, got shape \(1, 2\)"),
    ([[-1, 1]] * 4, r"got shape \(4, 2\)"),
    ("abc", "bounds must be numbers"),
    (None, "bounds must be numbers"),
    ([[-1, 1], [-1]], "bounds must be numbers"),
    ([[1e15, 1e15 + 1]] * 3, "axis 0 .* only ~\\d+ coordinates across it.*translate the box"),
    ((-1e308, 1e308), "axis 0 .* exceeds the float64 range"),
    ((-1e200, 1e200), "pre-activations may reach .* scale the box down"),
])
@pytest.mark.parametrize("mode", ["complex", "surface", "track", "extract_complex"])
def test_odd_boxes_are_refused_clearly(bounds, match, mode):
    base, level = _base()
    with pytest.raises(ValueError, match=match):
        if mode == "extract_complex":
            extract_complex(base, bounds, progress=False)
        else:
            extract_mesh(base, bounds, mode=mode, level=level, progress=False)


def test_float32_refuses_what_float64_accepts():
    base, level = _base()
    thin = [[-1, 1], [-1, 1], [0.1, 0.1 + 1e-9]]
    with pytest.raises(ValueError, match="float32 has only .* use dtype=float64"):
        extract_mesh(base, thin, level=level, progress=False, dtype="float32")
    with pytest.raises(ValueError, match="exceeds the float32 range"):
        extract_mesh(_scaled(base, 1e38), (-1e38, 1e38), level=level, progress=False, dtype="float32")
    _mesh(base, thin, "surface", level)  # float64 has 1e7 coordinates across it


def test_box_without_the_surface_gives_an_empty_mesh_and_says_so():
    base, level = _base()
    for mode in ("complex", "surface", "track"):
        with pytest.warns(UserWarning, match="does not reach the level"):
            mesh = extract_mesh(base, [[0.9, 1]] * 3, mode=mode, level=level, progress=False)
        assert mesh.is_empty
        # independent: the network stays on one side of the level on a fine grid of the box
        g = torch.stack(torch.meshgrid(*[torch.linspace(0.9, 1, 21, dtype=F64)] * 3, indexing="ij"), -1)
        f = base(g.reshape(-1, 3)) - level
        assert bool((f > 0).all()) or bool((f < 0).all())


@pytest.mark.parametrize("box", [[[-1, 1], [-1, 1], [0.1, 0.1 + 1e-12]], [[-1, 1], [-1, 1], [0, 1e-12]]])
def test_very_thin_boxes_agree_in_every_mode_and_lie_on_the_level_set(box):
    base, level = _base()
    meshes = [_mesh(base, box, m, level) for m in ("complex", "surface", "track")]
    counts = {m.stats["n_polygons"] for m in meshes}
    assert len(counts) == 1 and counts.pop() > 0
    lo, hi = np.array(box)[:, 0], np.array(box)[:, 1]
    for m in meshes:
        assert m.stats["max_abs_f"] < 1e-14
        assert (m.vertices >= lo).all() and (m.vertices <= hi).all()
    # the level set meets the slab's bottom face: vertices lie exactly on it (coordinates interpolated
    # along an edge of that face keep z = lo exactly)
    bottom = meshes[1].vertices[np.abs(meshes[1].vertices[:, 2] - lo[2]) < 1e-18]
    assert len(bottom) > 0


@pytest.mark.parametrize("mode", ["complex", "surface", "track"])
@pytest.mark.parametrize("scale", [1e12, 1e15, 1e20])
def test_unscaled_huge_box_is_refused(mode, scale):
    """The same network over +-1e12 and more (not scaled): its first-layer hyperplanes pass the
    origin at ~0.1-1, far below what interpolating along edges that long resolves. The modes
    then disagree (589/580/580 polygons at 1e12 before this check): refuse, never answer wrongly."""
    base, level = _base()
    with pytest.raises(ValueError, match="closer than float64 resolves over this box"):
        extract_mesh(base, (-scale, scale), mode=mode, level=level, progress=False)
    # the same network on a box of its own size answers, and every mode agrees
    counts = {_mesh(base, (-1, 1), m, level).stats["n_polygons"] for m in ("complex", "surface", "track")}
    assert len(counts) == 1 and counts.pop() > 0
