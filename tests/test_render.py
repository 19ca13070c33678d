"""Headless pictures: non-empty images of the requested size; failures only warn."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from matplotlib.image import imread

from nsr.networks import random_network
from nsr.render import (
    plot_series,
    render_complex_2d,
    render_mesh,
    render_side_by_side,
    render_slice,
)


def _check_png(path, size):
    img = imread(path)
    assert img.shape[:2] == (size[1], size[0])
    assert img[..., :3].std() > 0.01  # not a blank canvas
    assert not list(path.parent.glob(".*tmp*"))  # temp file renamed away


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(3, 0.3)


def test_render_mesh(tmp_path, sphere):
    out = render_mesh(sphere, tmp_path / "a.png", size=(320, 240), edges=True)
    _check_png(out, (320, 240))
    polys = [np.asarray(f) for f in sphere.faces[:50]]
    _check_png(render_mesh(sphere, tmp_path / "b.png", polygons=polys), (512, 512))


def test_render_empty_mesh(tmp_path):
    assert render_mesh(trimesh.Trimesh(), tmp_path / "e.png").is_file()


def test_side_by_side(tmp_path, sphere):
    out = render_side_by_side([sphere, sphere], ["exact", "MC"], tmp_path / "s.png", panel=200)
    _check_png(out, (400, 230))


def test_render_complex_2d(tmp_path):
    v = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], dtype=float)
    e = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 4], [4, 2]])
    regions = [np.array([0, 1, 2, 4]), np.array([0, 4, 2, 3])]
    out = render_complex_2d(v, e, tmp_path / "c.png", regions=regions, values=np.array([-1.0, 2.0]),
                            level_set=np.array([[[0, 0], [1, 1]]]), size=(256, 256))  # fmt: skip
    _check_png(out, (256, 256))


def test_render_slice(tmp_path):
    net = random_network(3, [8, 8], seed=0)
    seg = np.array([[[-0.5, -0.5], [0.5, 0.5]]])
    out = render_slice(net, (-1, 1), 2, 0.0, tmp_path / "sl.png", segments=seg, resolution=64)
    _check_png(out, (512, 512))


def test_plot_series(tmp_path):
    path = tmp_path / "p.png"
    out = plot_series([32, 64], {"t": [1.0, 2.0]}, path, "res", "s", hlines={"x": 1.5})
    _check_png(out, (560, 420))


def test_failure_degrades_to_warning(tmp_path):
    with pytest.warns(UserWarning, match="render_mesh failed"):
        assert render_mesh("not a mesh", tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_polygon_segments_cull_back_faces():
    from nsr.render import polygon_segments

    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    up, down = np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0])
    assert polygon_segments(v, [up, down]).shape == (8, 2, 3)
    segs = polygon_segments(v, [up, down], eye=np.array([0.0, 0.0, 1.0]))
    assert segs.shape == (4, 2, 3)
    np.testing.assert_allclose(segs[:, 1], v[[1, 2, 3, 0]])
