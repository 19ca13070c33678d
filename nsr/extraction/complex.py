"""The exact polyhedral complex of a piecewise-affine network (a :class:`~nsr.pl.PLGraph`), by edge subdivision.

Berzins, "Polyhedral Complex Extraction from ReLU Networks using Edge Subdivision",
ICML 2023 (arXiv 2306.07212). The 1-skeleton (vertices, edges) of the current complex is
kept together with the sign-vectors that encode its combinatorics. For every neuron in
order, its pre-activation is evaluated at the vertices; every edge whose endpoints have
opposite signs is split at the interpolated zero (exact: the neuron is affine on every
current edge); the new vertices that bound a common 2-face are connected. A 2-face is
named by a *face key*: the sign-vector of one of its edges with one zero entry made
non-zero. Keys are hashed, sorted, and paired.

Constraints and sign-vectors
----------------------------
Constraint ids follow :class:`nsr.pl.layout.ConstraintLayout`: ``0 .. 2D-1`` for the box
facets (``2d``: ``x_d >= lo_d``, ``2d+1``: ``x_d <= hi_d``, positive inside), then the planes
of the graph's encoder if it has one (``2D .. 2D+P-1``, split first: they are fixed planes of
the input space), then the hidden neurons in layer order, and last the output level set (used
by :meth:`PolyhedralComplex.level_set`). Every neuron of a graph (ReLU, LeakyReLU, PReLU, abs;
clamps are two neurons) has one hyperplane, and its pre-activation, affine in the input and in
earlier layers (skip and residual blocks), is affine on every cell of the neurons before it:
the property the subdivision needs. Evaluation is :meth:`PLGraph.preactivations` and every
bound comes from :mod:`nsr.pl.bounds`. A
sign-vector has one entry in {-1, 0, +1} per constraint. It is stored compactly: the
zero entries of a vertex (``D`` of them) or an edge (``D-1``) as sorted ids, and the
positive entries as a bit set packed in int64 words.

Degenerate positions
--------------------
Networks whose hyperplanes meet in one point or line (all hidden biases zero, as
``geometric_init`` starts; integer or 1/8 weights; duplicated, opposite or zero neurons) put
vertices exactly on later hyperplanes. The pre-activation computed there (evaluated, then
carried through edge interpolations) is a rounded zero of either sign, and classifying it by
its sign would cut a convex 2-face more than once: holes, unpaired faces, Euler
characteristics in the hundreds. nsr therefore takes every value within a tolerance
``tol_c`` of zero as an exact zero (:func:`snap_to_zero`), and counts an exact zero as
positive (:func:`positive_side`). ``tol_c`` is one constant per neuron for the whole box
(:func:`sign_tolerances`: 64 eps times the neuron's rounding scale, ``sum over its sources
|block| @ max|source value| + |b_c|`` with the sources' largest magnitudes over the box),
whatever the tiles, workers or mode.
The rule ``z >= -tol_c`` is then the exact classification of the network whose neuron ``c``
has its bias raised by ``tol_c``: a closed half-space, which meets the boundary of every
convex 2-face in one arc, so every face is cut at most once and the result is a valid
complex (Euler characteristic 1) of that perturbed network, for every vertex whose computed
value is within its rounding error of the true one and whose true value is not within that
error of ``-tol_c`` (measured on bias-free nets in float64: rounded zeros stay below one
unit, other values start above 1e4 units). A snapped endpoint has ``z = 0`` exactly, so a
cut there is at ``t = 0`` and the new vertex (and its carried values) are bitwise the
endpoint's: the perturbation shows up as coincident vertices and zero-length edges. Pruning
widens its bounds by the same tolerance (:func:`may_reach`), so it never drops a cell that
the rule would cut. Zero sets stay combinatorial: a vertex's zeros are the constraints that
constructed it. Face keys that do not pair where they must (every key of a complete face;
after region pruning only keys seen three or more times, and every key of the level set)
are counted in ``stats["unpaired_face_keys"]`` with a warning: 0 on every healthy extraction.
float32 cannot always tell rounded zeros from small values (on deep bias-free networks the
two ranges overlap); that is when it is non-zero. Because the tolerance is set by the largest
value over the box, a box far larger than the network's detail (an unscaled network over
``+-1e15``) erases detail below its resolution: ``stats["uncertain_signs"]`` counts values taken
as zero although above rounding noise (0 on healthy extractions) and :func:`check_box` warns
when first-layer offsets are below the box's resolution; both warn. Boxes a dtype cannot
answer on at all are refused by :func:`check_box`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr import limits
from nsr.extraction.bits import unpack_bits
from nsr.extraction.encoder_split import encoder_arrangement_size
from nsr.extraction.guards import as_bounds, check_box, no_tf32, resolve_dtype
from nsr.extraction.memory import _HELD_FACTOR, _size, default_memory_limit, peak_memory_mb
from nsr.extraction.skeleton import _Buffer, _Skeleton, split_by_constraint
from nsr.extraction.subdivide import encoder_facets, subdivide
from nsr.extraction.tolerances import sign_tolerances, warn_uncertain, warn_unpaired
from nsr.files import COMPLEX_FORMAT, COMPLEX_VERSION, GRAPH_PREFIX, atomic_write, read_complex_file
from nsr.networks import PLNetwork
from nsr.pl.graph import PLGraph, as_graph
from nsr.pl.layout import ConstraintLayout


class PolyhedralComplex:
    """The polyhedral complex of a ReLU network restricted to a box.

    Attributes
    ----------
    vertices : ``(V, D)`` float tensor.
    edges : ``(E, 2)`` int32 tensor of vertex indices (int32 halves the memory of large
        complexes; it indexes tensors like int64).
    vertex_zeros : ``(V, D)`` int32, the sorted constraint ids each vertex lies on.
    edge_zeros : ``(E, D-1)`` int32, the sorted constraint ids each edge lies on.
    vertex_signs : ``(V, W)`` int64, packed positive entries of the sign-vectors.
    net : the :class:`~nsr.pl.PLGraph` (a :class:`~nsr.networks.PLNetwork` given is converted),
        bounds ``(D, 2)``, and ``stats``.
    layout : the :class:`~nsr.pl.layout.ConstraintLayout` of the constraint ids (box facets,
        encoder facets, neurons, output).

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network (converted to its :class:`~nsr.pl.PLGraph`).
    bounds : (D, 2) float ndarray
        The box.
    vertices : (V, D) float Tensor
        Vertex positions.
    edges : (E, 2) int32 Tensor
        Vertex indices of each edge.
    vertex_zeros : (V, D) int32 Tensor
        Sorted constraint ids each vertex lies on.
    edge_zeros : (E, D-1) int32 Tensor
        Sorted constraint ids each edge lies on.
    vertex_signs : (V, W) int64 Tensor
        Packed positive entries of the vertices' sign-vectors (:func:`nsr.extraction.bits.pack_bits`).
    stats : dict, optional
        Figures of the extraction (time, memory, ``unpaired_face_keys``, ``uncertain_signs``).
    level : float, optional
        The level the complex is refined by (:meth:`refine`), ``None`` if not.
    n_facets : int
        Number of encoder facets among the constraint ids.

    Examples
    --------
    Usually made by :func:`extract_complex`. The octahedron network ``|x| + |y| + |z| - 0.5``
    has three hyperplanes through the origin inside ``[-1, 1]^3``: they cut the cube into its 8
    octants, a 3x3x3 grid of vertices:

    >>> from nsr.extraction.complex import extract_complex
    >>> from nsr.networks import octahedron_network
    >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)
    >>> cplx.f_vector, cplx.euler_characteristic
    ([27, 54, 36, 8], 1)
    """

    def __init__(
        self,
        net: PLGraph | PLNetwork,
        bounds: np.ndarray,
        vertices: Tensor,
        edges: Tensor,
        vertex_zeros: Tensor,
        edge_zeros: Tensor,
        vertex_signs: Tensor,
        stats: dict[str, Any] | None = None,
        level: float | None = None,
        n_facets: int = 0,
    ) -> None:
        self.net = as_graph(net)
        self.layout = ConstraintLayout(int(vertices.shape[1]), self.net.widths, n_facets)
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.vertices = vertices
        self.edges = edges
        self.vertex_zeros = vertex_zeros
        self.edge_zeros = edge_zeros
        self.vertex_signs = vertex_signs
        self.stats: dict[str, Any] = dict(stats or {})
        self.level = level  # set when the complex is refined by the level set f = level
        self._cells: dict[int, tuple[Tensor, Tensor]] = {}
        self._incidence: dict[int, Tensor] = {}

    # -- sizes --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.vertices.shape[1])

    @property
    def n_neurons(self) -> int:
        return self.net.n_neurons

    @property
    def graph(self) -> PLGraph:
        """The network (the same object as :attr:`net`)."""
        return self.net

    @property
    def n_constraints(self) -> int:
        """Box facets, encoder facets, hidden neurons and the output."""
        return self.layout.n_constraints

    @property
    def output_constraint(self) -> int:
        return self.layout.output

    def __repr__(self) -> str:
        return f"PolyhedralComplex(dim={self.dim}, f_vector={self.f_vector})"

    # -- cells --------------------------------------------------------------------------
    def edge_signs(self) -> Tensor:
        """Packed positive entries of the edges' sign-vectors, ``(E, W)`` int64.

        Returns
        -------
        (E, W) int64 Tensor
            The bitwise or of the endpoints' packed signs: an edge is positive on a constraint
            where either endpoint is (its zero entries are in :attr:`edge_zeros`).
        """
        return self.vertex_signs[self.edges[:, 0]] | self.vertex_signs[self.edges[:, 1]]

    def cells(self, k: int) -> tuple[Tensor, Tensor]:
        """Cells of dimension ``k`` as ``(signs (M, W) int64 packed, zeros (M, D-k) int64)``.

        Cells of dimension ``k >= 2`` are recovered from the ``(k-1)``-cells' sign-vectors:
        each zero entry made positive or negative (box facets only positive) names a
        ``k``-cell containing it.

        Parameters
        ----------
        k : int
            Cell dimension ``0..D``; cells of ``k >= 2`` are computed once and cached.

        Returns
        -------
        signs : (M, W) int64 Tensor
            Packed positive entries of each cell's sign-vector.
        zeros : (M, D-k) int64 Tensor
            Sorted constraint ids each cell lies on.

        Raises
        ------
        ValueError
            For ``k`` outside ``0..D``.

        Examples
        --------
        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> signs, zeros = cplx.cells(2)
        >>> tuple(signs.shape), tuple(zeros.shape)  # 36 squares, each on one plane
        ((36, 1), (36, 1))
        """
        if not 0 <= k <= self.dim:
            raise ValueError(f"cell dimension must be in 0..{self.dim}, got {k}")
        if k == 0:
            return self.vertex_signs, self.vertex_zeros.long()
        if k == 1:
            return self.edge_signs(), self.edge_zeros.long()
        if k not in self._cells:
            self._build_cells(k)
        return self._cells[k]

    def _build_cells(self, k: int) -> None:
        from nsr.extraction.cells import cofaces  # nsr.extraction.cells builds on this module's bit sets and hashes

        pos, zeros = self.cells(k - 1)
        cell_pos, cell_zeros, incidence = cofaces(pos, zeros, self.dim)
        del pos, zeros  # the edges' signs are gathered anew; free them before the next dimension
        self._cells[k] = (cell_pos, cell_zeros)
        self._incidence[k] = incidence

    def incidence(self, k: int) -> Tensor:
        """Pairs ``(i, j)``: ``(k-1)``-cell ``i`` is a facet of ``k``-cell ``j``, ``(M, 2)``
        (int32 for ``k >= 2``, grouped by ``j``: they are the largest arrays of a big complex).

        Parameters
        ----------
        k : int
            Dimension of the larger cells, ``1..D``.

        Returns
        -------
        (M, 2) Tensor
            int64 for ``k = 1`` (each edge's two vertices), int32 above.

        Examples
        --------
        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> cplx.incidence(3).shape[0], cplx.incidence(1).shape[0]  # 8 cubes of 6 squares; 54 edges of 2 vertices
        (48, 108)
        """
        if k == 1:
            n = self.edges.shape[0]
            return torch.stack([self.edges.reshape(-1).long(), torch.arange(n).repeat_interleave(2)], 1)
        self.cells(k)
        return self._incidence[k]

    @property
    def f_vector(self) -> list[int]:
        """Number of cells of each dimension ``0..D``."""
        sizes = [int(self.vertices.shape[0]), int(self.edges.shape[0])]  # no sign gather needed
        return (sizes + [int(self.cells(k)[0].shape[0]) for k in range(2, self.dim + 1)])[: self.dim + 1]

    @property
    def euler_characteristic(self) -> int:
        """``sum_k (-1)^k f_k``; 1 for a complex that subdivides a box."""
        return sum((-1) ** k * f for k, f in enumerate(self.f_vector))

    def sign_vectors(self, k: int, index: Tensor | None = None) -> Tensor:
        """Full sign-vectors of ``k``-cells, ``(M, C)`` int8 in {-1, 0, +1} over all constraints
        (box facets, neurons, output).

        Parameters
        ----------
        k : int
            Cell dimension ``0..D``.
        index : (M,) int64 Tensor, optional
            The cells wanted (default: all of dimension ``k``).

        Returns
        -------
        (M, C) int8 Tensor
            ``C`` = :attr:`n_constraints`; ``0`` where the cell lies on the constraint.

        Examples
        --------
        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> sv = cplx.sign_vectors(3)
        >>> tuple(sv.shape), sorted(sv[:, 6:9].sum(1).tolist())  # the octants' signs on x, y, z
        ((8, 13), [-3, -1, -1, -1, 1, 1, 1, 3])
        >>> bool((sv[:, :6] == 1).all())  # every region is inside the box
        True
        """
        pos, zeros = self.cells(k)
        if index is not None:
            pos, zeros = pos[index], zeros[index]
        ids = torch.arange(self.n_constraints, device=pos.device)
        sv = unpack_bits(pos, ids).to(torch.int8) * 2 - 1
        if zeros.shape[1]:
            sv.scatter_(1, zeros, torch.zeros_like(zeros, dtype=torch.int8))
        return sv

    def activation_patterns(self, k: int, index: Tensor | None = None) -> Tensor:
        """Activation patterns (neuron strictly positive) of ``k``-cells, ``(M, N)`` bool.

        Parameters
        ----------
        k : int
            Cell dimension ``0..D``.
        index : (M,) int64 Tensor, optional
            The cells wanted (default: all of dimension ``k``).

        Returns
        -------
        (M, N) bool Tensor
            One column per neuron, in layer order.

        Examples
        --------
        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> pat = cplx.activation_patterns(3)
        >>> tuple(pat.shape), bool(pat[:, 3:].all())  # relu(10 - x_i) is active on the whole box
        ((8, 6), True)
        """
        pos, _ = self.cells(k)
        if index is not None:
            pos = pos[index]
        ids = torch.arange(self.layout.neuron_offset, self.layout.output, device=pos.device)
        return unpack_bits(pos, ids)

    def region_gradients(self, index: Tensor | None = None) -> Tensor:
        """Gradient of the network on each D-cell (region), ``(M, D)``.

        Parameters
        ----------
        index : (M,) int64 Tensor, optional
            The regions wanted (default: all).

        Returns
        -------
        (M, D) float Tensor
            The gradient of the output ``g`` on each region.

        Examples
        --------
        The gradient of ``|x| + |y| + |z|`` is the octant's sign vector:

        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> grads = cplx.region_gradients()
        >>> bool((grads == cplx.sign_vectors(3)[:, 6:9].to(grads.dtype)).all())
        True
        """
        pat = self.activation_patterns(self.dim, index)
        splits = torch.split(pat, self.net.widths, dim=1)
        return self.net.local_gradients(list(splits))

    # -- level set ----------------------------------------------------------------------
    def refine(self, level: float = 0.0) -> PolyhedralComplex:
        """This complex subdivided by the output level set ``f = level`` as well.

        Parameters
        ----------
        level : float
            The level of the output ``g``.

        Returns
        -------
        PolyhedralComplex
            A new complex whose :attr:`level` is ``level``; ``self`` if it is already refined by that level.

        Raises
        ------
        ValueError
            When the complex is already refined by another level.

        Examples
        --------
        The octahedron cuts each octant in two, one cell inside and one outside:

        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> fine = cplx.refine(0.0)
        >>> fine.f_vector, fine.euler_characteristic
        ([33, 72, 56, 16], 1)
        """
        if self.level is not None:
            if self.level != level:
                raise ValueError(f"complex already refined by the level {self.level}")
            return self
        sk = _Skeleton(
            x=_Buffer(self.vertices.clone()),
            vzeros=_Buffer(self.vertex_zeros.clone()),
            vpos=_Buffer(self.vertex_signs.clone()),
            vtile=_Buffer(torch.zeros(len(self.vertices), dtype=torch.int32, device=self.vertices.device)),
            edges=_Buffer(self.edges.clone()),
            ezeros=_Buffer(self.edge_zeros.clone()),
            dim=self.dim,
        )
        net = self.net.to(device=self.vertices.device, dtype=self.vertices.dtype)
        box = torch.as_tensor(self.bounds, dtype=net.dtype, device=net.device)
        with torch.no_grad(), no_tf32():
            tol = sign_tolerances(net, box[:, 0], box[:, 1], level)[-1][0]
            f = net(sk.x.t) - level
            split_by_constraint(sk, None, f, self.output_constraint, tol)
        warn_unpaired(sk.unpaired, net.dtype)
        warn_uncertain(int(sk.uncertain), net.dtype)
        stats = dict(self.stats, unpaired_face_keys=self.stats.get("unpaired_face_keys", 0) + sk.unpaired,
                     uncertain_signs=self.stats.get("uncertain_signs", 0) + int(sk.uncertain))
        return PolyhedralComplex(self.net, self.bounds, sk.x.t, sk.edges.t, sk.vzeros.t, sk.ezeros.t,
                                 sk.vpos.t, stats, level=level, n_facets=self.layout.n_facets)

    def level_set(self, level: float = 0.0) -> LevelSet:
        """The sub-complex on ``f = level``: cells of dimension ``0..D-1`` whose sign-vector is
        zero on the output.

        Parameters
        ----------
        level : float
            The level of the output ``g``.

        Returns
        -------
        LevelSet
            Its cells index those of the refined complex (:meth:`refine`).

        Examples
        --------
        The octahedron: 6 vertices, 12 edges, 8 triangles, a sphere:

        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> surface = cplx.level_set(0.0)
        >>> surface.f_vector, surface.euler_characteristic
        ([6, 12, 8], 2)
        """
        ref = self.refine(level)
        out = ref.output_constraint
        cells = []
        for k in range(ref.dim):
            pos, zeros = ref.cells(k)
            on = (zeros == out).any(1) if zeros.shape[1] else torch.zeros(len(pos), dtype=torch.bool, device=pos.device)
            cells.append(torch.nonzero(on).squeeze(1))
        return LevelSet(ref, cells)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the complex, its network and metadata to one ``.npz`` file (atomically).

        Parameters
        ----------
        path : str or Path
            Destination; its folder is created.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        ValueError
            For a network the file format cannot store (an encoder's tables, for one); the
            message says what.

        Examples
        --------
        A round trip through :meth:`load`:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from nsr.extraction.complex import extract_complex
        >>> from nsr.networks import octahedron_network
        >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)  # the 8 octants of [-1, 1]^3
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     again = PolyhedralComplex.load(cplx.save(Path(tmp) / "complex.npz"))
        >>> again.f_vector, bool((again.vertices == cplx.vertices).all())
        ([27, 54, 36, 8], True)
        """
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "vertices": self.vertices.cpu().numpy(),
            "edges": self.edges.cpu().numpy(),
            "vertex_zeros": self.vertex_zeros.cpu().numpy(),
            "edge_zeros": self.edge_zeros.cpu().numpy(),
            "vertex_signs": self.vertex_signs.cpu().numpy(),
            "bounds": self.bounds,
        }
        if self.net.encoder is not None:
            raise ValueError("saving the complex of a network with an encoder is not supported (the encoder's tables "
                             "are an object of their own); keep the network and extract again, or save the mesh")
        meta = {"format": COMPLEX_FORMAT, "version": COMPLEX_VERSION, "level": self.level,
                "dtype": str(self.vertices.dtype), "stats": self.stats}
        if self.net.is_mlp and self.net.is_relu:
            # plain ReLU MLPs keep the Linear/ReLU layout that older files and other tools read
            plain = self.net.to_plnetwork(pre_transform=True)  # the complex is g's: the transform is not needed
            for i, (w, b) in enumerate(zip(plain.weights, plain.biases)):
                arrays[f"weight_{i}"] = w.detach().cpu().double().numpy()
                arrays[f"bias_{i}"] = b.detach().cpu().double().numpy()
            meta["n_layers"] = len(plain.weights)
        else:  # skip/residual blocks, leaky or two-sided neurons, output transforms: the graph's plain tensors
            for key, value in self.net.state_dict().items():
                t = value.detach().cpu()
                arrays[GRAPH_PREFIX + key] = (t.double() if t.is_floating_point() else t).numpy()
            meta.update(network="graph", n_layers=self.net.n_layers + 1)
        arrays["meta"] = np.array(json.dumps(meta, default=float))
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> PolyhedralComplex:
        """Read a complex written by :meth:`save`.

        The file is read as numbers only (never unpickled) and validated before use: array
        shapes and dtypes, finite vertices and weights, ``lo < hi`` bounds, vertex indices and
        constraint ids in range. Raises ``FileNotFoundError`` or
        :class:`~nsr.files.ComplexFileError` (a ``ValueError``) naming the file and what is wrong.

        Parameters
        ----------
        path : str or Path
            A ``.npz`` written by :meth:`save`.

        Returns
        -------
        PolyhedralComplex
            On the CPU, with the saved network, stats and level.

        Examples
        --------
        See :meth:`save`; a file that is not a complex is refused:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from nsr.files import ComplexFileError
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "x.npz").write_bytes(b"not a zip file")
        ...     try:
        ...         PolyhedralComplex.load(Path(tmp) / "x.npz")
        ...     except ComplexFileError:
        ...         print("refused")
        refused
        """
        f = read_complex_file(path)
        t = torch.from_numpy
        return cls(f["net"], f["bounds"], t(f["vertices"]), t(f["edges"]), t(f["vertex_zeros"]),
                   t(f["edge_zeros"]), t(f["vertex_signs"]), f["meta"].get("stats"), f["meta"].get("level"))


@dataclass
class LevelSet:
    """Cells of a refined complex lying on ``f = level``; ``cells[k]`` indexes ``complex.cells(k)``.

    Parameters
    ----------
    complex : PolyhedralComplex
        The complex refined by the level (:meth:`PolyhedralComplex.refine`).
    cells : list of (M_k,) int64 Tensor
        For ``k = 0..D-1``, the indices of the ``k``-cells on the level set.

    Examples
    --------
    A 2D network ``2 relu(x) + 2 relu(y) + relu(10 - x) + relu(10 - y) - 20.5 = |x| + |y| - 0.5``
    on ``[-1, 1]^2``: its level set is a diamond, a closed polyline of 4 vertices and 4 edges:

    >>> import torch
    >>> from nsr.extraction.complex import extract_complex
    >>> from nsr.networks import PLNetwork
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> net = PLNetwork([torch.cat([eye, -eye]), torch.tensor([[2.0, 2.0, 1.0, 1.0]], dtype=torch.float64)],
    ...                 [torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=torch.float64),
    ...                  torch.tensor([-20.5], dtype=torch.float64)])
    >>> diamond = extract_complex(net, (-1, 1), progress=False).level_set()
    >>> diamond.dim, diamond.f_vector, diamond.euler_characteristic
    (1, [4, 4], 0)
    >>> sorted(diamond.vertices.abs().sum(1).tolist())  # |x| + |y| = 0.5 at every vertex
    [0.5, 0.5, 0.5, 0.5]
    """

    complex: PolyhedralComplex
    cells: list[Tensor]

    @property
    def dim(self) -> int:
        return self.complex.dim - 1

    @property
    def vertices(self) -> Tensor:
        return self.complex.vertices[self.cells[0]]

    @property
    def edges(self) -> Tensor:
        """Level-set edges as indices into :attr:`vertices`, ``(E, 2)``."""
        if self.dim < 1:
            return torch.zeros(0, 2, dtype=torch.int64, device=self.complex.vertices.device)
        dev = self.cells[0].device
        remap = torch.full((len(self.complex.vertices),), -1, dtype=torch.int64, device=dev)
        remap[self.cells[0]] = torch.arange(len(self.cells[0]), device=dev)
        return remap[self.complex.edges[self.cells[1]]]

    @property
    def f_vector(self) -> list[int]:
        return [len(c) for c in self.cells]

    @property
    def euler_characteristic(self) -> int:
        return sum((-1) ** k * f for k, f in enumerate(self.f_vector))


# Encoders with at most this many planes are not estimated: their arrangement has at most C(64, 3) points.
SMALL_ENCODER_PLANES = 64


def _refuse_large_encoder_complex(net: PLGraph, lo: Tensor, hi: Tensor, facets: tuple[Tensor, Tensor, Tensor],
                                  memory_limit: float | None) -> None:
    """Stop before any work where the arrangement of the encoder's planes alone would exceed the memory
    limit (:func:`nsr.extraction.encoder_split.encoder_arrangement_size`; the neurons cut it further),
    instead of cutting plane after plane until the limit (a 6-level grid to resolution 96: refused in
    6 s, where it used to cut for over 5 minutes)."""
    n_planes = len(facets[1])
    limit = memory_limit if memory_limit is not None else default_memory_limit()
    if n_planes <= SMALL_ENCODER_PLANES or limit is None:
        return
    layout = ConstraintLayout(net.in_dim, net.widths, n_planes)
    vertices, size = encoder_arrangement_size(lo, hi, facets, layout)
    need = _HELD_FACTOR["complex"] * size
    if need > limit:
        raise MemoryError(
            f"the complex of this network over this box is too large here: the arrangement of its encoder's "
            f"{n_planes:,} planes alone has ~{vertices:,.0f} vertices (estimated from sample tiles; the "
            f"neurons add more), which need ~{_size(need)}, over the limit of {_size(limit)} (memory_limit; "
            "default 80% of the available memory); use extract_mesh(mode='track') for the surface, a smaller "
            "box, a coarser encoding or a machine with more memory")


def extract_complex(
    net: Any,
    bounds: Any,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    memory_limit: float | None = None,
) -> PolyhedralComplex:
    """Extract the exact polyhedral complex of a piecewise-affine network over a box.

    Parameters
    ----------
    net : a :class:`~nsr.pl.PLGraph`, a :class:`~nsr.networks.PLNetwork`, an ``nn.Module``
        (traced by :func:`nsr.pl.trace`) or anything :func:`nsr.pl.as_graph` reads. The complex
        is that of the piecewise-affine output ``g`` (before any output transform); a graph
        with an encoder also gets the encoder's planes (constraint ids ``2D..2D+P-1``).
    bounds : ``(lo, hi)`` for every axis, or a ``(D, 2)`` array.
    dtype : float64 by default (see :func:`resolve_dtype`); float32 on request.
    device : "cpu", "cuda", ...; defaults to the network's device.
    progress : show a progress bar per neuron with vertex and edge counts.
    memory_limit : bytes the extraction may hold before it stops with a ``MemoryError``
        naming what it reached (default: 80% of the memory available at the start); a grid
        network's encoder arrangement is sized first and refused at once where it alone exceeds it.

    Returns
    -------
    PolyhedralComplex
        On ``device`` in ``dtype``, with ``stats`` (``time_s``, ``peak_memory_mb``,
        ``unpaired_face_keys`` and ``uncertain_signs``, both 0 on a healthy extraction).

    Examples
    --------
    A random 2-D network's complex subdivides the square: Euler characteristic 1:

    >>> from nsr.networks import random_network
    >>> net = random_network(2, [8, 8], seed=0)
    >>> cplx = extract_complex(net, (-1, 1), progress=False)
    >>> cplx.euler_characteristic, cplx.stats["unpaired_face_keys"]
    (1, 0)
    >>> curve = cplx.level_set()  # its vertices are on f = 0 up to rounding
    >>> float(net(curve.vertices).abs().max()) < 1e-12
    True
    """
    net = as_graph(net)
    dt = resolve_dtype(dtype)
    dev = limits.check_device(device) if device is not None else net.device
    b = as_bounds(bounds, net.in_dim)
    check_box(net, b, dt)
    memory_limit = limits.check_memory_limit(memory_limit)
    netd = net.to(device=dev, dtype=dt)
    lo = torch.as_tensor(b[:, 0], dtype=dt, device=dev)[None]
    hi = torch.as_tensor(b[:, 1], dtype=dt, device=dev)[None]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    with torch.no_grad(), no_tf32():
        facets = encoder_facets(netd, lo[0], hi[0])
        _refuse_large_encoder_complex(netd, lo[0], hi[0], facets, memory_limit)
        sk, _ = subdivide(netd, lo, hi, level=None, progress=progress, desc="complex", memory_limit=memory_limit,
                          facets=facets)
    stats = {
        "time_s": time.perf_counter() - t0,
        "peak_memory_mb": peak_memory_mb(dev),
        "unpaired_face_keys": sk.unpaired,
        "uncertain_signs": sk.stats["uncertain_signs"],
        "dtype": str(dt),
        "device": str(dev),
    }
    return PolyhedralComplex(netd, b, sk.x.t, sk.edges.t, sk.vzeros.t, sk.ezeros.t, sk.vpos.t, stats,
                             n_facets=len(facets[1]))
