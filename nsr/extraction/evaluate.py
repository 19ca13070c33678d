"""Chunked evaluation of a network's pre-activations at skeleton vertices."""

from __future__ import annotations

import torch
from torch import Tensor

from nsr.extraction.memory import _chunks
from nsr.networks import PLNetwork
from nsr.pl.graph import PLGraph, as_graph


def _evaluate(graph: PLGraph | PLNetwork, x: Tensor, layer: int, j0: int, j1: int, shift: float) -> Tensor:
    """Pre-activations ``(V, j1 - j0)`` of neurons ``j0:j1`` of ``layer`` (``n_layers``: the
    output) at ``x`` ``(V, D)``, minus ``shift``, in vertex chunks: the one evaluator of the
    extraction (:meth:`PLGraph.preactivations`; nsr.extraction.tracking still passes PLNetworks)."""
    graph = as_graph(graph)
    out = torch.empty(x.shape[0], j1 - j0, dtype=x.dtype, device=x.device)
    for sl in _chunks(x.shape[0], x.element_size() * graph.live_width, x.device):
        out[sl] = graph.preactivations(x[sl], layer, j0, j1)
    if shift:
        out -= shift
    return out


def _source_values(graph: PLGraph, x: Tensor, sources: list[int], upto: int) -> Tensor:
    """Values ``(V, sum n_k)`` of ``sources`` (layers ``< upto``' post-activations, the input,
    the features) at ``x``, concatenated in the given order."""
    if not sources:
        return x.new_zeros(x.shape[0], 0)
    values = graph.post_activations(x, upto)
    return torch.cat([values[k] for k in sources], 1)
