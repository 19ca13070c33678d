"""CPU and CUDA give the same exact geometry (run by ``make gpu-check``; skipped without CUDA).

The extraction is combinatorial: in float64 the sign decisions on CUDA and on the CPU agree
for these generic networks, so the complex's f-vector and the mesh's polygons must be the same.
In float32 rounding differs between devices, so the check there is the polygon count and
the measured |f| at the vertices, which must stay at float32 precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsr.extraction.complex import extract_complex
from nsr.extraction.surface import extract_mesh
from nsr.networks import random_network

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _median_level(net) -> float:
    """A level that the random network certainly crosses inside [-1, 1]^3."""
    x = torch.rand(4096, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    return float(net(x).median())


def _polygon_set(mesh) -> set[tuple]:
    """Polygons as sets of vertex positions rounded to 1e-9: comparable across devices."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    return {tuple(sorted(map(tuple, np.round(v[p], 9)))) for p in mesh.polygons}


def _same_on_both(net, mode: str, level: float, **kwargs):
    """The float64 mesh on the CPU and on CUDA: the same polygons, exact vertices on CUDA."""
    a = extract_mesh(net, (-1, 1), mode=mode, level=level, device="cpu", progress=False, **kwargs)
    b = extract_mesh(net, (-1, 1), mode=mode, level=level, device="cuda", progress=False, **kwargs)
    assert len(a.polygons) == len(b.polygons) > 0
    assert _polygon_set(a) == _polygon_set(b)
    assert b.stats["max_abs_f"] < 1e-12
    return a, b


@pytest.mark.parametrize("widths", [[16, 16], [32, 32, 32]])
def test_complex_cuda_matches_cpu(widths):
    net = random_network(3, widths, seed=4)
    a = extract_complex(net, (-1, 1), device="cpu", progress=False)
    b = extract_complex(net, (-1, 1), device="cuda", progress=False)
    assert a.f_vector == b.f_vector
    assert a.euler_characteristic == b.euler_characteristic == 1
    assert torch.allclose(a.vertices.sort(0).values, b.vertices.cpu().sort(0).values, atol=1e-12)


@pytest.mark.parametrize("mode", ["complex", "surface", "track"])
def test_mesh_cuda_matches_cpu_float64(mode):
    net = random_network(3, [24, 24, 24], seed=7)
    _same_on_both(net, mode, _median_level(net))


@pytest.mark.parametrize("mode", ["complex", "surface"])
def test_mesh_cuda_float32(mode):
    net = random_network(3, [16, 16], seed=3)
    level = _median_level(net)
    a = extract_mesh(net, (-1, 1), mode=mode, level=level, device="cpu", dtype=torch.float32, progress=False)
    b = extract_mesh(net, (-1, 1), mode=mode, level=level, device="cuda", dtype=torch.float32, progress=False)
    assert len(a.polygons) == len(b.polygons) > 0
    assert b.stats["max_abs_f"] < 1e-5


def test_marching_cubes_cuda_matches_cpu():
    from nsr.eval.marching_cubes import marching_cubes

    net = random_network(3, [16, 16], seed=3)
    level = _median_level(net)
    a = marching_cubes(net, (-1, 1), 48, level=level, device="cpu")
    b = marching_cubes(net, (-1, 1), 48, level=level, device="cuda")
    assert len(a.faces) == len(b.faces)
    assert np.allclose(a.vertices, b.vertices, atol=1e-5)


@pytest.mark.parametrize("mode", ["surface", "track"])
def test_grid_network_cuda_matches_cpu_float64(mode):
    # a nested simplex grid over a box of its cells: surface mode cuts its simplices (nsr.extraction.kuhn)
    from nsr.pl.encoding import GridMLP

    torch.manual_seed(2)
    net = GridMLP(in_dim=3, width=16, depth=2, n_levels=2, min_resolution=4, max_resolution=8, features=2,
                  init_scale=1.0, include_input=True).double()
    a, b = _same_on_both(net, mode, _median_level(net))
    if mode == "surface":
        assert b.stats["kuhn_simplices_kept"] == a.stats["kuhn_simplices_kept"] > 0


def test_polylines_2d_cuda_match_cpu():
    # the 2-D level set is walked on the CPU after a CUDA subdivision
    net = random_network(2, [16, 16], seed=5)
    x = torch.rand(4096, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    level = float(net(x).median())
    a = extract_mesh(net, (-1, 1), mode="surface", level=level, device="cpu", progress=False)
    b = extract_mesh(net, (-1, 1), mode="surface", level=level, device="cuda", progress=False)
    assert len(a.polylines) == len(b.polylines) > 0
    assert np.allclose(np.sort(a.vertices, 0), np.sort(b.vertices, 0), atol=1e-12)
    assert b.stats["max_abs_f"] < 1e-12


def test_level_set_edges_cuda_match_cpu():
    net = random_network(3, [12, 12], seed=6)
    level = _median_level(net)
    a = extract_complex(net, (-1, 1), device="cpu", progress=False).level_set(level)
    b = extract_complex(net, (-1, 1), device="cuda", progress=False).level_set(level)
    assert a.f_vector == b.f_vector and len(a.edges) == len(b.edges) > 0
    assert int(b.edges.min()) >= 0


@pytest.mark.parametrize("kind", ["skip", "residual"])
@pytest.mark.parametrize("mode", ["surface", "track"])
def test_skip_and_residual_networks_cuda_match_cpu(kind, mode):
    from nsr.pl.models import ResidualMLP, SkipMLP

    torch.manual_seed(3)
    net = (SkipMLP(in_dim=3, width=16, depth=4, skip=2) if kind == "skip"
           else ResidualMLP(in_dim=3, width=16, depth=2, activation="leaky_relu")).double()
    _same_on_both(net, mode, _median_level(net))


def test_regularizer_term_cuda_matches_cpu():
    from nsr.networks import ReLUMLP
    from nsr.regularizers import ExactRegularizerCallback, SmoothnessRegularizer

    torch.manual_seed(4)
    net = ReLUMLP(in_dim=3, width=16, depth=2, geometric_init=True, radius=0.5).double()
    values = []
    for dev in ("cpu", "cuda"):
        callback = ExactRegularizerCallback([SmoothnessRegularizer(weight=1.0)], bounds=(-1, 1), dtype=torch.float64)
        terms = callback.term(net.to(dev))
        terms["smooth"].backward()
        grad = net.layers[0].weight.grad.detach().cpu().clone()
        net.zero_grad()
        values.append((float(terms["smooth"]), grad))
    assert values[0][0] == pytest.approx(values[1][0], rel=1e-9)
    assert torch.allclose(values[0][1], values[1][1], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("mode", ["surface", "track"])
def test_closed_meshes_cuda_match_cpu(mode):
    # close=True adds the box's caps, whose normals are set by index on the device
    net = random_network(3, [16, 16], seed=8)
    a, b = _same_on_both(net, mode, _median_level(net), close=True)
    assert int(np.sum(b.polygon_is_cap)) == int(np.sum(a.polygon_is_cap)) > 0
    assert b.stats["watertight"]
