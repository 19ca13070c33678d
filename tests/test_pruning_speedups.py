"""Faster pruning in surface mode (issue 16) against independent answers: complex mode's
polygons, brute-force region membership and live edges, sampled outputs inside tile bounds."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import nsr.extraction.surface as surface
from nsr.extraction.bits import bit_values
from nsr.extraction.pruning import (
    TileBounds,
    _group_equal,
    _keep_live_regions,
    _region_blocks,
    _region_members,
)
from nsr.extraction.subdivide import subdivide
from nsr.extraction.surface import extract_mesh
from nsr.networks import PLNetwork, random_network
from nsr.pl import as_graph
from nsr.pl.bounds import interval_bounds, layer_bounds


def _centered(dim: int, widths: list[int], seed: int) -> PLNetwork:
    """A random network whose zero level set crosses the box [-1, 1]^D."""
    net = random_network(dim, widths, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4096, dim, generator=gen, dtype=torch.float64) * 2 - 1
    net.biases[-1] -= net(x).median()
    return net.to(dtype=torch.float64)


def _unique_rows(a: np.ndarray, decimals: int = 9) -> np.ndarray:
    return np.unique(np.round(a, decimals) + 0.0, axis=0)


@pytest.mark.parametrize(("dim", "widths", "seed"), [
    (2, [4] * 12, 0), (3, [4] * 12, 1), (2, [32, 32], 2), (3, [32, 32], 3), (3, [8] * 6, 4), (3, [6] * 8, 5)])
def test_region_pruning_before_every_layer_keeps_complex_modes_polygons(monkeypatch, dim, widths, seed):
    """Regions pruned before every layer from layer 2 on (grouped region blocks, live-edge
    bitmasks), tiles before the others (incremental tile bounds): the polygons are those of
    complex mode, which enumerates the whole complex without any pruning."""
    net = _centered(dim, widths, seed)
    a = extract_mesh(net, (-1, 1), mode="complex", progress=False)
    monkeypatch.setattr(surface, "subdivide", functools.partial(subdivide, region_layers=len(widths)))
    b = extract_mesh(net, (-1, 1), mode="surface", tiles=3, progress=False)
    assert len(a.polygons if dim == 3 else a.polylines) > 0
    if len(widths) > 2:
        assert any(k.startswith("regions_kept_layer") for k in b.stats)
    assert {r.tobytes() for r in a.polygon_patterns} == {r.tobytes() for r in b.polygon_patterns}
    assert len(a.polygon_patterns) == len(b.polygon_patterns)
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-12)


def _skeleton(dim: int, widths: list[int], seed: int):
    net = random_network(dim, widths, seed=seed).to(dtype=torch.float64)
    lo = torch.tensor([[-1.0] * dim, [0.0] * dim], dtype=torch.float64)
    sk, _ = subdivide(net, lo, lo + 1, progress=False)
    return sk


def _explicit_regions(sk) -> tuple[torch.Tensor, int]:
    """Region ids ``(2^D, V)`` from the explicit keys (tile, sign vector with the chosen zeros
    made positive), -1 outside the box: the brute-force grouping."""
    d, v = sk.dim, sk.n_vertices
    words, masks = bit_values(sk.vzeros.t.long())
    keys, where = [], []
    for combo in range(1 << d):
        pk = sk.vpos.t.clone()
        ok = torch.ones(v, dtype=torch.bool)
        for i in range(d):
            if combo >> i & 1:
                pk[torch.arange(v), words[:, i]] |= masks[:, i]
            else:
                ok &= sk.vzeros.t[:, i] >= 2 * d
        keys.append(torch.cat([sk.vtile.t.long()[:, None], pk], 1)[ok])
        where.append(torch.nonzero(ok).squeeze(1) + combo * v)
    _, ids = torch.unique(torch.cat(keys), dim=0, return_inverse=True)
    region = torch.full((1 << d, v), -1, dtype=torch.int64)
    region.view(-1)[torch.cat(where)] = ids
    return region, int(ids.max()) + 1


@pytest.mark.parametrize("offset", [0, 2**31])  # payloads over 2^30: the torch.sort branch
def test_group_equal_brings_each_hashs_payloads_together(offset):
    """Against a dict from hash to payloads: every run is one hash's payloads, each payload once."""
    gen = torch.Generator().manual_seed(3)
    distinct = torch.randint(-(2**63), 2**63 - 1, (300,), generator=gen, dtype=torch.int64)
    h = distinct[torch.randint(0, 300, (5000,), generator=gen)]
    payload = torch.randperm(5000, generator=gen) + offset
    grouped, first = _group_equal(h, payload)
    expected: dict[int, set[int]] = {}
    for key, p in zip(h.tolist(), payload.tolist()):
        expected.setdefault(key, set()).add(p)
    runs = torch.tensor_split(grouped, torch.nonzero(first).squeeze(1)[1:])
    assert sorted(map(sorted, (r.tolist() for r in runs))) == sorted(map(sorted, expected.values()))
    assert bool(first[0]) and len(runs) == len(expected)


def test_group_equal_merges_only_hashes_that_agree_above_the_payloads_bits():
    """The numpy branch drops the hash's low bits: hashes that differ only there share a run (a
    merge, which widens bounds and so stays sound); any higher bit keeps them apart."""
    h = torch.tensor([64, 65, 64 + 2**40, 65, 64], dtype=torch.int64)
    grouped, first = _group_equal(h, torch.arange(5))
    runs = sorted(sorted(r.tolist()) for r in torch.tensor_split(grouped, torch.nonzero(first).squeeze(1)[1:]))
    assert runs == [[0, 1, 3, 4], [2]]


@pytest.mark.parametrize(("dim", "widths"), [(2, [12, 12]), (3, [10, 10]), (3, [4] * 5)])
def test_region_members_are_each_regions_vertices(dim, widths):
    sk = _skeleton(dim, widths, seed=7)
    region, members, starts, counts, by_count = _region_members(sk)
    explicit, n = _explicit_regions(sk)
    assert len(counts) == n
    # the same partition of the (combination, vertex) pairs
    m = explicit >= 0
    assert torch.equal(m, region >= 0)
    pairs = torch.unique(torch.stack([explicit[m], region[m]], 1), dim=0)
    assert len(pairs) == n
    # each region's run holds exactly the vertices that have it around them
    for r in range(n):
        run = members[starts[r]: starts[r] + counts[r]].tolist()
        assert sorted(run) == sorted(torch.nonzero((region == r).any(0)).squeeze(1).tolist())
    # blocks: every region once, in increasing count, one count per block
    seen = []
    for r0, r1, c in _region_blocks(counts[by_count], row_bytes=64):
        ids = by_count[r0:r1]
        assert (counts[ids] == c).all()
        seen.append(ids)
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
    assert (counts[by_count].diff() >= 0).all()


@pytest.mark.parametrize(("dim", "widths"), [(2, [12, 12]), (3, [10, 10]), (3, [4] * 5)])
def test_live_edges_are_the_edges_of_a_live_region(dim, widths):
    """An edge is kept exactly when a live region has both its endpoints (brute force over
    the explicit region sets of the two endpoints)."""
    sk = _skeleton(dim, widths, seed=8)
    region, n = _explicit_regions(sk)
    gen = torch.Generator().manual_seed(0)
    alive = torch.cat([torch.rand(n, generator=gen) < 0.3, torch.zeros(1, dtype=torch.bool)])
    e = sk.edges.t.long()
    ra, rb = region[:, e[:, 0]].T, region[:, e[:, 1]].T  # (E, 2^D)
    common = (ra[:, :, None] == rb[:, None, :]) & (ra[:, :, None] >= 0)
    live = alive[torch.where(ra < 0, n, ra)][:, :, None] & common
    want = live.any(2).any(1)
    assert 0 < int(want.sum()) < len(want)
    x = sk.x.t
    expect = {(x[a].numpy().tobytes(), x[b].numpy().tobytes()) for a, b in e[want].tolist()}
    _keep_live_regions(sk, region, alive, n)
    x, e = sk.x.t, sk.edges.t.long()
    got = {(x[a].numpy().tobytes(), x[b].numpy().tobytes()) for a, b in e.tolist()}
    assert sk.n_edges == int(want.sum()) and got == expect


def _tiles(dim: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(k)
    lo = torch.rand(k, dim, generator=gen, dtype=torch.float64) * 1.6 - 1
    return lo, lo + 0.1 + 0.3 * torch.rand(k, dim, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize(("dim", "widths"), [(3, [4] * 12), (2, [16, 16, 16]), (3, [8] * 5)])
def test_incremental_tile_bounds_contain_sampled_outputs(dim, widths):
    """Updated one layer at a time with valid (CROWN) bounds of each layer as its "exact" range,
    the output bounds contain the network's output at points sampled in every tile."""
    g = as_graph(random_network(dim, widths, seed=len(widths)).to(dtype=torch.float64))
    lo, hi = _tiles(dim, 24)
    known = layer_bounds(g, lo, hi)
    tb = TileBounds(g, lo, hi)
    gen = torch.Generator().manual_seed(1)
    x = lo[:, None] + (hi - lo)[:, None] * torch.rand(len(lo), 500, dim, generator=gen, dtype=torch.float64)
    f = g(x.reshape(-1, dim)).reshape(len(lo), -1)
    for layer in range(len(widths)):
        olo, ohi = tb.update(layer, known[: layer + 1])
        assert (olo[:, None] <= f + 1e-12).all() and (f <= ohi[:, None] + 1e-12).all()


@pytest.mark.parametrize(("dim", "widths"), [(3, [4] * 12), (2, [16, 16, 16]), (3, [8] * 5)])
def test_incremental_tile_bounds_equal_fresh_ones_with_intervals(dim, widths):
    """With interval bounds on hidden layers, pushing one layer forward from the bounds held
    gives the hidden layers' bounds that a fresh pass from all the given ranges gives (intervals
    are monotone, so intersecting with the older, wider bounds changes nothing), at every layer;
    the output's bound is at least as tight (linear bounds are not monotone in the relaxations,
    so an earlier layer's output bound can be the tighter one, and it is kept)."""
    g = as_graph(random_network(dim, widths, seed=len(widths) + 1).to(dtype=torch.float64))
    lo, hi = _tiles(dim, 16)
    known = layer_bounds(g, lo, hi)  # tighter than intervals: what subdivision's exact ranges are
    tb = TileBounds(g, lo, hi, crown_hidden=False)
    for layer in range(len(widths)):
        tb.update(layer, known[: layer + 1])
        fresh = layer_bounds(g, lo, hi, known[: layer + 1], crown_hidden=False)
        for (a_lo, a_hi), (b_lo, b_hi) in zip(tb.pre[:-1], fresh[:-1]):
            torch.testing.assert_close(a_lo, b_lo, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a_hi, b_hi, rtol=1e-12, atol=1e-12)
        (a_lo, a_hi), (b_lo, b_hi) = tb.pre[-1], fresh[-1]
        assert (a_lo >= b_lo - 1e-12).all() and (a_hi <= b_hi + 1e-12).all()
    # and the first update is exactly a fresh pass, linear bounds on hidden layers included
    tb = TileBounds(g, lo, hi)
    tb.update(0, known[:1])
    for (a_lo, a_hi), (b_lo, b_hi) in zip(tb.pre, layer_bounds(g, lo, hi, known[:1])):
        assert torch.equal(a_lo, b_lo) and torch.equal(a_hi, b_hi)
    assert interval_bounds(g, lo, hi)[-1][0].shape == tb.pre[-1][0].shape
