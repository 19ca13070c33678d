"""Cells of every dimension (nsr.extraction.cells): against materialized keys, and under hash collisions."""

from __future__ import annotations

import pytest
import torch

import nsr.extraction.cells as cells_mod
from nsr.extraction.bits import bit_values
from nsr.extraction.complex import extract_complex
from nsr.networks import random_network


def _brute_cofaces(pos, zeros, dim):
    """Every (facet, key) pair as explicit rows; cells are the distinct rows."""
    rows, owners = [], []
    ar = torch.arange(len(pos))
    for i in range(zeros.shape[1]):
        zi = zeros[:, i]
        rest = torch.cat([zeros[:, :i], zeros[:, i + 1 :]], 1)
        w, m = bit_values(zi)
        plus = pos.clone()
        plus[ar, w] |= m
        rows.append(torch.cat([plus, rest], 1))
        owners.append(ar)
        neg = torch.nonzero(zi >= 2 * dim).squeeze(1)  # a box facet has no outside
        rows.append(torch.cat([pos[neg], rest[neg]], 1))
        owners.append(neg)
    rows, owners = torch.cat(rows), torch.cat(owners)
    uniq = {tuple(r) for r in rows.tolist()}
    pairs = {(int(o), tuple(r)) for o, r in zip(owners.tolist(), rows.tolist())}
    return uniq, pairs


def _as_sets(cell_pos, cell_zeros, incidence):
    keys = [tuple(r) for r in torch.cat([cell_pos, cell_zeros], 1).tolist()]
    pairs = {(int(f), keys[int(c)]) for f, c in incidence.tolist()}
    return set(keys), pairs, keys


@pytest.mark.parametrize("dim,widths,seed", [(2, [8, 8], 0), (3, [10, 10], 1), (3, [6, 6, 6], 2), (4, [6, 5], 3)])
def test_cofaces_match_materialized_keys(dim, widths, seed):
    cx = extract_complex(random_network(dim, widths, seed=seed), (-1, 1), progress=False)
    for k in range(2, dim + 1):
        pos, zeros = cx.cells(k - 1)
        got_cells, got_pairs, keys = _as_sets(*cells_mod.cofaces(pos, zeros, dim))
        want_cells, want_pairs = _brute_cofaces(pos, zeros, dim)
        assert len(keys) == len(got_cells)  # no cell listed twice
        assert got_cells == want_cells
        assert got_pairs == want_pairs
    assert cx.euler_characteristic == 1


def test_cofaces_survive_hash_collisions(monkeypatch):
    """A hash with 3 bits collides all the time: runs of equal hashes must be split by key."""
    cx = extract_complex(random_network(3, [8, 8], seed=5), (-1, 1), progress=False)
    pos, zeros = cx.cells(1)
    want_cells, want_pairs = _brute_cofaces(pos, zeros, 3)
    real_mix = cells_mod._mix
    monkeypatch.setattr(cells_mod, "_mix", lambda x: real_mix(x) & 7)
    got_cells, got_pairs, keys = _as_sets(*cells_mod.cofaces(pos, zeros, 3))
    assert len(keys) == len(got_cells) == len(want_cells)
    assert got_cells == want_cells and got_pairs == want_pairs


def test_every_interior_face_bounds_two_regions():
    """In 3D every 2-face bounds two regions, or one where it lies on the box."""
    cx = extract_complex(random_network(3, [12, 12], seed=6), (-1, 1), progress=False)
    inc = cx.incidence(3).long()
    per_face = torch.bincount(inc[:, 0], minlength=cx.f_vector[2])
    on_box = (cx.cells(2)[1] < 6).any(1)
    assert (per_face[on_box] == 1).all() and (per_face[~on_box] == 2).all()
    # each region is a polytope with at least 4 facets
    assert (torch.bincount(inc[:, 1]) >= 4).all()


def _patterns(net, x):
    z1 = x @ net.weights[0].T + net.biases[0]
    z2 = torch.relu(z1) @ net.weights[1].T + net.biases[1]
    return torch.cat([z1 > 0, z2 > 0], 1)


def test_regions_are_the_activation_patterns_of_the_box():
    """Independent answers: every pattern met by dense random points is a region, and the
    centroid of each region's vertices (inside it: regions are convex) has its pattern."""
    net = random_network(3, [6, 6], seed=7)
    cx = extract_complex(net, (-1, 1), progress=False)
    patterns = cx.activation_patterns(3)
    regions = [tuple(r) for r in patterns.tolist()]
    assert len(set(regions)) == len(regions)
    x = torch.rand(200_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    assert {tuple(r) for r in _patterns(net, x).tolist()} <= set(regions)
    # region -> 2-faces -> edges -> vertices, through the incidences
    face_of = cx.incidence(3).long()
    edge_of = cx.incidence(2).long()
    edges_per_face = [[] for _ in range(cx.f_vector[2])]
    for e, f in edge_of.tolist():
        edges_per_face[f].append(e)
    verts = [set() for _ in regions]
    for f, r in face_of.tolist():
        for e in edges_per_face[f]:
            verts[r].update(cx.edges[e].tolist())
    centroids = torch.stack([cx.vertices[sorted(v)].mean(0) for v in verts])
    assert torch.equal(_patterns(net, centroids), patterns)
