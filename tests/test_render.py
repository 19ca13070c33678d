"""Headless pictures: non-empty images of the requested size; failures only warn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from matplotlib.image import imread

from nsr.eval.render import (
    plot_series,
    render_complex_2d,
    render_mesh,
    render_side_by_side,
    render_slice,
)
from nsr.networks import random_network


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
    _check_png(out, (640, 560))


def test_plot_series(tmp_path):
    path = tmp_path / "p.png"
    out = plot_series([32, 64], {"t": [1.0, 2.0]}, path, "res", "s", hlines={"x": 1.5})
    _check_png(out, (560, 420))


def test_failure_degrades_to_warning(tmp_path):
    with pytest.warns(UserWarning, match="render_mesh failed"):
        assert render_mesh("not a mesh", tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_polygon_segments_cull_back_faces():
    from nsr.eval.render import polygon_segments

    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    up, down = np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0])
    assert polygon_segments(v, [up, down]).shape == (8, 2, 3)
    segs = polygon_segments(v, [up, down], eye=np.array([0.0, 0.0, 1.0]))
    assert segs.shape == (4, 2, 3)
    np.testing.assert_allclose(segs[:, 1], v[[1, 2, 3, 0]])


# ----------------------------------------------------------------------------- projected drawing


def _canvas_pixels(draw, size=200):
    """Render with ``draw(ax)`` on a bare Agg figure; pixels (H, W, 3) in [0, 1]."""
    from nsr.eval.render import _figure

    fig = _figure((size, size))
    ax = fig.add_axes((0, 0, 1, 1))
    draw(ax)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_axis_off()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def test_draw_faces_hides_lines_behind_nearer_faces():
    """A far square's outline runs under a nearer square: it must not show through it, and must
    show where nothing covers it (hidden-line removal by painter's order)."""
    from nsr.eval.render import draw_faces

    # View from +z (elev 90): screen x, y are world -y... use the camera frame to place squares.
    view = (90.0, -90.0)
    from nsr.eval.render import camera_frame

    right, up, eye = camera_frame(view)
    def square(c, h, depth):
        return np.array([c[0] * right + c[1] * up + depth * eye + s * h * right + t * h * up
                         for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    far = square((0.0, 0.0), 0.8, 0.0)  # outline at screen x = +-0.8
    near = square((0.8, 0.0), 0.4, 0.5)  # covers the far square's right edge for |y| < 0.4
    verts = np.vstack([near, far])  # the near one first: the drawing order must come from depth
    faces = [np.arange(4), np.arange(4, 8)]
    img = _canvas_pixels(lambda ax: draw_faces(ax, verts, faces, view, outline=(0, 0, 0), linewidth=2.0))

    def px(x, y):  # screen coordinates in [-1, 1] -> pixel
        return img[int(round((1 - (y + 1) / 2) * 199)), int(round((x + 1) / 2 * 199))]

    assert px(0.8, 0.0).min() > 0.2, "the far outline shows through the nearer face"
    assert px(0.8, 0.6).max() < 0.2, "the far outline is missing where nothing covers it"
    assert px(-0.8, 0.0).max() < 0.2


def test_newell_normals_and_culling():
    from nsr.eval.render import _cycles, newell_normals

    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    flat, lens = _cycles([np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0])])
    np.testing.assert_allclose(newell_normals(v, flat, lens), [[0, 0, 1], [0, 0, -1]])


def test_render_polygons_overview_colored(tmp_path, sphere):
    from nsr.eval.render import render_colored_mesh, render_overview, render_polygons

    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    out = render_polygons(v, list(f), tmp_path / "p.png", size=(400, 300), zoom=((0, 0, 0.3), 0.1), title="t")
    _check_png(out, (400, 300))
    out = render_overview([(v, list(f)), (v, f)], ["a", "b"], ["1\n2", "3"], tmp_path / "o.png",
                          ((0.0, 0.0, 0.3), 0.1), outlines=[True, False], panel=200)
    assert out is not None and imread(out)[..., :3].std() > 0.01
    vals = np.linspace(1e-4, 1e-2, len(f))
    _check_png(render_colored_mesh(sphere, vals, tmp_path / "c.png", "d (box units)", size=(300, 260)), (300, 260))


# ----------------------------------------------------------------------------- 2D networks


def _diamond_network(r=0.5, reach=10.0):
    """Exact 2D ReLU network of |x| + |y| - r (one hidden layer, 4 neurons)."""
    import torch

    from nsr.networks import PLNetwork

    eye = torch.eye(2, dtype=torch.float64)
    w1 = torch.cat([eye, -eye])
    b1 = torch.tensor([0.0, 0.0, reach, reach], dtype=torch.float64)
    w2 = torch.tensor([[2.0, 2.0, 1.0, 1.0]], dtype=torch.float64)
    return PLNetwork([w1, w2], [b1, torch.tensor([-2 * reach - r], dtype=torch.float64)])


def test_complex_regions_tile_the_box():
    """Regions are convex counter-clockwise cycles whose areas add up to the box's (independent
    of how the complex stores them), one per 2-cell; the diamond network has 4 quadrant regions."""
    from nsr.eval.render import complex_regions
    from nsr.extraction.complex import extract_complex

    for net, n_expected in ((_diamond_network(), 4), (random_network(2, [6, 5], seed=3), None)):
        cx = extract_complex(net, (-1, 1), progress=False)
        v, cycles = complex_regions(cx)
        assert len(cycles) == cx.f_vector[2]
        if n_expected:
            assert len(cycles) == n_expected
        areas = []
        for c in cycles:
            p = v[c]
            q = np.roll(p, -1, axis=0)
            cross = p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]
            areas.append(0.5 * cross.sum())
            d = q - p
            turn = d[:, 0] * np.roll(d, -1, 0)[:, 1] - d[:, 1] * np.roll(d, -1, 0)[:, 0]
            assert (turn >= -1e-12).all()  # convex, counter-clockwise
        assert np.isclose(sum(areas), 4.0)


def test_level_set_segments_diamond_perimeter():
    from nsr.eval.render import level_set_segments
    from nsr.extraction.complex import extract_complex

    cx = extract_complex(_diamond_network(0.5), (-1, 1), progress=False)
    seg = level_set_segments(cx)
    length = np.linalg.norm(seg[:, 1] - seg[:, 0], axis=1).sum()
    assert np.isclose(length, 4 * np.sqrt(2) * 0.5)  # closed form: the diamond's perimeter
    assert np.abs(np.abs(seg).sum(-1) - 0.5).max() < 1e-12


def test_plane_network_is_the_restriction():
    import torch

    from nsr.eval.render import plane_network

    net = random_network(3, [8, 8], seed=1)
    uw = torch.rand(50, 2, dtype=torch.float64) - 0.5
    for axis in range(3):
        x = torch.zeros(50, 3, dtype=torch.float64)
        x[:, [i for i in range(3) if i != axis]] = uw
        x[:, axis] = 0.3
        torch.testing.assert_close(plane_network(net, axis, 0.3)(uw), net(x))


def test_render_regions_and_slice_regions(tmp_path):
    from nsr.eval.render import render_regions, render_slice_regions
    from nsr.extraction.complex import extract_complex
    from nsr.training.shapes import Circle, Sphere

    cx = extract_complex(random_network(2, [8, 8], seed=0), (-1, 1), progress=False)
    _check_png(render_regions(cx, tmp_path / "r.png", size=(300, 260), true_sdf=Circle(0.5)), (300, 260))
    _check_png(render_regions(cx, tmp_path / "q.png", color_by="region", size=(300, 260)), (300, 260))
    out = render_slice_regions(random_network(3, [8, 8], seed=0), (-1, 1), 2, 0.1, tmp_path / "s.png",
                               true_sdf=Sphere(0.4))
    _check_png(out, (760, 640))


def test_render_slice_with_true_shape(tmp_path):
    from nsr.training.shapes import Sphere

    net = random_network(3, [8, 8], seed=0)
    out = render_slice(net, (-1, 1), 1, 0.0, tmp_path / "t.png", resolution=48, true_sdf=Sphere(0.5))
    _check_png(out, (640, 560))


def test_plot_errors(tmp_path):
    from nsr.eval.render import plot_errors

    out = plot_errors([32, 64], {"cd": [1e-2, 5e-3]}, {"f": [1e-3, 4e-4]}, tmp_path / "e.png",
                      distance_lines={"exact": 2e-3}, residual_lines={"exact": 1e-16, "nan": float("nan")})
    _check_png(out, (960, 420))


def _rgb_at(path, x: float, y: float) -> np.ndarray:
    """RGB of the pixel at figure fractions (x, y) (y up, matplotlib's convention)."""
    img = imread(path)
    h, w = img.shape[:2]
    return img[int(round((1 - y) * h)), int(round(x * w)), :3]


def test_slice_colors_reach_both_ends_of_the_scale(tmp_path):
    """|x| + |y| + |z| - 0.5 on z = 0 has its minimum -0.5 at the center and its maximum 1.5 at
    the box's corners: the center must be the colormap's darkest blue, not the pale blue that a
    scale symmetric about 0 (-1.5 .. 1.5) gives it; the inside of a shape must not read white."""
    from matplotlib import colormaps

    from nsr.networks import octahedron_network

    out = render_slice(octahedron_network(0.5), (-1, 1), 2, 0.0, tmp_path / "o.png", resolution=65)
    # The field's axes occupy (0.1, 0.09, 0.68, 0.83) of the figure: its center is the origin.
    centre = _rgb_at(out, 0.1 + 0.34, 0.09 + 0.415)
    darkest = np.asarray(colormaps["RdBu_r"](0.0))[:3]
    assert np.abs(centre - darkest).max() < 0.08, (centre, darkest)


def test_2d_extract_preview_shows_regions_values_and_level_set(tmp_path):
    """nsr-extract's picture of a 2D network is the classic one: regions colored by the value
    (blue inside, red outside), not only the complex's edges on white."""
    from nsr.eval.render import plane_network
    from nsr.extract import run_extract
    from nsr.networks import octahedron_network

    torch = pytest.importorskip("torch")
    net = tmp_path / "diamond.pt"
    torch.save(plane_network(octahedron_network(0.9), 2, 0.05).state_dict(), net)  # |x| + |y| - 0.85
    run_extract({"net": str(net), "bounds": [-1, 1], "out_dir": str(tmp_path / "o")})
    img = imread(tmp_path / "o" / "preview.png")[..., :3]
    blue = (img[..., 2] > img[..., 0] + 0.3).mean()
    red = (img[..., 0] > img[..., 2] + 0.3).mean()
    assert blue > 0.02 and red > 0.02, (blue, red)


def _grid_net(seed: int = 0):
    """A coarse random GridMLP (levels 2 and 3 over [-1, 1]^3, features large enough to bend f)."""
    from nsr.pl.encoding import GridMLP

    torch.manual_seed(seed)
    return GridMLP(in_dim=3, width=8, depth=2, n_levels=2, min_resolution=2, max_resolution=3,
                   include_input=True, init_scale=1.0).double().eval()


@pytest.mark.parametrize("axis, value", [(1, 0.0), (2, 0.37), (0, -1.0 / 3.0)])
def test_plane_network_cuts_a_grid_network_into_an_exact_2d_complex(axis, value):
    """A grid network's plane section: the same values as the 3-D network on the plane; its 2-D
    complex has Euler characteristic 1, the network is affine on every region (least squares over
    the region's vertices and random interior points of each region of non-zero area: no breakpoint
    line is missing; the cut at
    y = 0 puts diagonal traces on axis lines, which must be listed once), and its level set's vertices
    are on f = 0."""
    from nsr.eval.render import complex_regions, plane_network
    from nsr.extraction.complex import extract_complex

    net = _grid_net()
    cut = plane_network(net, axis, value)
    others = [i for i in range(3) if i != axis]
    gen = torch.Generator().manual_seed(1)
    uw = torch.rand(200, 2, generator=gen, dtype=torch.float64) * 2 - 1
    x = torch.full((200, 3), value, dtype=torch.float64)
    x[:, others] = uw
    with torch.no_grad():
        torch.testing.assert_close(cut(uw), net(x).reshape(-1))
    cx = extract_complex(cut, (-1, 1), progress=False)
    assert cx.euler_characteristic == 1
    verts, regions = complex_regions(cx)
    assert len(regions) > 20
    worst = 0.0
    for cyc in regions:
        corners = torch.as_tensor(verts[cyc])
        nxt = corners.roll(-1, 0)
        if abs(float((corners[:, 0] * nxt[:, 1] - nxt[:, 0] * corners[:, 1]).sum())) < 1e-10:
            continue  # a zero-area cell where several lines meet (degenerate positions are perturbed)
        w = torch.rand(8, len(cyc), generator=gen, dtype=torch.float64)
        pts = torch.cat([corners, (w / w.sum(1, keepdim=True)) @ corners])
        with torch.no_grad():
            f = cut(pts).reshape(-1)
        design = torch.cat([pts, torch.ones(len(pts), 1, dtype=torch.float64)], 1)
        coef = torch.linalg.lstsq(design, f[:, None]).solution
        worst = max(worst, float((design @ coef - f[:, None]).abs().max()))
    assert worst < 1e-9, worst
    level = cx.level_set()
    if len(level.vertices):
        with torch.no_grad():
            assert float(cut(torch.as_tensor(level.vertices)).abs().max()) < 1e-12


def test_render_slice_regions_of_a_grid_network(tmp_path):
    from nsr.eval.render import render_slice_regions

    out = render_slice_regions(_grid_net(), (-1, 1), 1, 0.0, tmp_path / "g.png")
    _check_png(out, (760, 640))
