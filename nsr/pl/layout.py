"""Constraint numbering: which hyperplane a constraint id names.

Every stage that records which hyperplanes a vertex, edge or polygon lies on (sign vectors,
zero sets, face keys, tracking columns, differentiable vertices) uses one numbering::

    [0, 2D)                       box facets: 2d is ``x_d = lo_d``, 2d + 1 is ``x_d = hi_d``
    [2D, 2D + P)                  encoder facets (fixed planes of the input space), if any
    [2D + P, 2D + P + N)          neurons, layer by layer, in order within a layer
    2D + P + N                    the output at the level

:class:`ConstraintLayout` holds the offsets and answers "which constraint is neuron ``j`` of
layer ``l``" and "what kind / which layer is constraint ``c``" (vectorized), so no module
computes ``2 * D + j`` by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BOX, FACET, NEURON, OUTPUT = 0, 1, 2, 3
"""Constraint kinds returned by :meth:`ConstraintLayout.kind`."""


@dataclass(frozen=True)
class ConstraintLayout:
    """Offsets of the box facets, encoder facets, neurons and output in the constraint ids.

    Parameters
    ----------
    dim : int
        Input dimension ``D``.
    widths : sequence of int
        Neurons per layer, in the order the layers are split.
    n_facets : int
        Number ``P`` of encoder facets (0 for a network without an encoder).

    Examples
    --------
    >>> import torch
    >>> from nsr.pl.layout import ConstraintLayout
    >>> lay = ConstraintLayout(3, (4, 2))
    >>> lay.n_box, lay.neuron(1, 0), lay.output, lay.n_constraints
    (6, 10, 12, 13)
    >>> lay.layer_of(torch.tensor([0, 6, 9, 10, 11, 12]))
    tensor([-1,  0,  0,  1,  1,  2])
    >>> lay.kind(torch.tensor([5, 6, 12])).tolist()  # BOX, NEURON, OUTPUT
    [0, 2, 3]
    """

    dim: int
    widths: tuple[int, ...]
    n_facets: int = 0

    def __init__(self, dim: int, widths: Sequence[int], n_facets: int = 0) -> None:
        if dim < 1 or n_facets < 0 or any(int(w) < 1 for w in widths):
            raise ValueError(f"a constraint layout needs dim >= 1, n_facets >= 0 and widths >= 1, got "
                             f"dim={dim}, n_facets={n_facets}, widths={list(widths)}")
        object.__setattr__(self, "dim", int(dim))
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))
        object.__setattr__(self, "n_facets", int(n_facets))

    @classmethod
    def of(cls, network: object, n_facets: int = 0) -> ConstraintLayout:
        """The layout of a network (anything with ``in_dim`` and ``widths``, e.g. a :class:`PLGraph`).

        Parameters
        ----------
        network : PLGraph or PLNetwork
            The network.
        n_facets : int
            Number of encoder facets crossing the box.

        Returns
        -------
        ConstraintLayout

        Examples
        --------
        >>> from nsr.networks import random_network
        >>> from nsr.pl.layout import ConstraintLayout
        >>> ConstraintLayout.of(random_network(2, [8, 8], seed=0)).n_constraints  # 4 + 16 + 1
        21
        """
        return cls(int(network.in_dim), list(network.widths), n_facets)  # type: ignore[attr-defined]

    @property
    def n_box(self) -> int:
        """Number of box facets, ``2D``."""
        return 2 * self.dim

    @property
    def facet_offset(self) -> int:
        """Id of the first encoder facet."""
        return self.n_box

    @property
    def neuron_offset(self) -> int:
        """Id of the first neuron."""
        return self.n_box + self.n_facets

    @property
    def n_neurons(self) -> int:
        """Number of neurons ``N``."""
        return sum(self.widths)

    @property
    def layer_offsets(self) -> list[int]:
        """Id of the first neuron of each layer, then the output's id (``L + 1`` entries)."""
        out = [self.neuron_offset]
        for w in self.widths:
            out.append(out[-1] + w)
        return out

    @property
    def output(self) -> int:
        """Id of the output constraint (``f = level``)."""
        return self.neuron_offset + self.n_neurons

    @property
    def n_constraints(self) -> int:
        """Number of constraint ids."""
        return self.output + 1

    def box(self, axis: int, side: int) -> int:
        """Id of the facet ``x_axis = lo`` (``side`` 0) or ``x_axis = hi`` (``side`` 1).

        Parameters
        ----------
        axis : int
            Axis ``0..D-1``.
        side : int
            0 for the lower facet, 1 for the upper.

        Returns
        -------
        int
            ``2 axis + side``.

        Examples
        --------
        >>> from nsr.pl.layout import ConstraintLayout
        >>> lay = ConstraintLayout(3, (4, 2), n_facets=5)  # box 0..5, facets 6..10, neurons 11..16, output 17
        >>> lay.box(2, 1)
        5
        """
        return 2 * axis + side

    def facet(self, p: int) -> int:
        """Id of encoder facet ``p``.

        Parameters
        ----------
        p : int
            Index ``0..P-1`` of the facet.

        Returns
        -------
        int
            ``2D + p``.

        Examples
        --------
        >>> from nsr.pl.layout import ConstraintLayout
        >>> lay = ConstraintLayout(3, (4, 2), n_facets=5)  # box 0..5, facets 6..10, neurons 11..16, output 17
        >>> lay.facet(0), lay.facet(4)
        (6, 10)
        """
        return self.facet_offset + p

    def neuron(self, layer: int, j: int = 0) -> int:
        """Id of neuron ``j`` of ``layer`` (``layer == n_layers`` is the output).

        Parameters
        ----------
        layer : int
            Layer ``0..L-1``, or ``L`` for the output.
        j : int
            Neuron index within the layer.

        Returns
        -------
        int

        Examples
        --------
        >>> from nsr.pl.layout import ConstraintLayout
        >>> lay = ConstraintLayout(3, (4, 2), n_facets=5)  # box 0..5, facets 6..10, neurons 11..16, output 17
        >>> lay.neuron(0), lay.neuron(1, 1), lay.neuron(2) == lay.output
        (11, 16, True)
        """
        return self.layer_offsets[layer] + j

    def kind(self, c: Tensor) -> Tensor:
        """Kind of each id: ``BOX``, ``FACET``, ``NEURON`` or ``OUTPUT`` (same shape, int64).

        Parameters
        ----------
        c : (...,) int Tensor
            Constraint ids (anything ``torch.as_tensor`` accepts).

        Returns
        -------
        (...,) int64 Tensor
            ``BOX`` (0), ``FACET`` (1), ``NEURON`` (2) or ``OUTPUT`` (3) per id.

        Examples
        --------
        >>> from nsr.pl.layout import ConstraintLayout
        >>> lay = ConstraintLayout(3, (4, 2), n_facets=5)  # box 0..5, facets 6..10, neurons 11..16, output 17
        >>> lay.kind([0, 6, 11, 17]).tolist()
        [0, 1, 2, 3]
        """
        c = torch.as_tensor(c)
        k = torch.full_like(c, NEURON, dtype=torch.int64)
        k = torch.where(c < self.neuron_offset, FACET, k)
        k = torch.where(c < self.n_box, BOX, k)
        return torch.where(c == self.output, OUTPUT, k)

    def layer_of(self, c: Tensor) -> Tensor:
        """Layer of each id (``-1`` for box and encoder facets, ``L`` for the output; int64).

        Parameters
        ----------
        c : (...,) int Tensor
            Constraint ids.

        Returns
        -------
        (...,) int64 Tensor

        Examples
        --------
        >>> from nsr.pl.layout import ConstraintLayout
        >>> lay = ConstraintLayout(3, (4, 2), n_facets=5)  # box 0..5, facets 6..10, neurons 11..16, output 17
        >>> lay.layer_of([5, 10, 11, 14, 15, 17]).tolist()
        [-1, -1, 0, 0, 1, 2]
        """
        c = torch.as_tensor(c)
        edges = torch.tensor(self.layer_offsets, device=c.device, dtype=torch.int64)
        return torch.bucketize(c.long(), edges, right=True) - 1

    def neuron_index(self, c: Tensor) -> Tensor:
        """Global neuron index ``0..N-1`` of neuron ids (others give values outside that range).

        Parameters
        ----------
        c : (...,) int Tensor
            Constraint ids.

        Returns
        -------
        (...,) int64 Tensor
            ``c - (2D + P)``.

        Examples
        --------
        >>> from nsr.pl.layout import ConstraintLayout
        >>> lay = ConstraintLayout(3, (4, 2), n_facets=5)  # box 0..5, facets 6..10, neurons 11..16, output 17
        >>> lay.neuron_index([11, 16, 17]).tolist()  # the output gives N
        [0, 5, 6]
        """
        return torch.as_tensor(c).long() - self.neuron_offset

    def box_axis_side(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Axis and side of box-facet ids (other ids are clamped into the box range first).

        Parameters
        ----------
        c : (...,) int Tensor
            Box-facet ids ``0..2D-1``.

        Returns
        -------
        axis : (...,) int64 Tensor
            ``c // 2``.
        side : (...,) int64 Tensor
            ``c % 2``: 0 for ``x = lo``, 1 for ``x = hi``.

        Examples
        --------
        >>> from nsr.pl.layout import ConstraintLayout
        >>> lay = ConstraintLayout(3, (4, 2), n_facets=5)  # box 0..5, facets 6..10, neurons 11..16, output 17
        >>> [t.tolist() for t in lay.box_axis_side([0, 3, 5])]
        [[0, 1, 2], [0, 1, 1]]
        """
        cc = torch.as_tensor(c).long().clamp(0, self.n_box - 1)
        return torch.div(cc, 2, rounding_mode="floor"), cc % 2
