"""Guards run before any extraction: boxes, dtypes, TF32 off, and boxes too large for the network's detail."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from nsr.extraction.tolerances import _rounding_scale, source_magnitudes
from nsr.networks import PLNetwork
from nsr.pl.bounds import layer_bounds
from nsr.pl.graph import PLGraph, as_graph


def as_bounds(bounds: Any, dim: int = 3) -> np.ndarray:
    """Normalize a box to a ``(D, 2)`` float64 array ``[[lo_0, hi_0], ...]``.

    Accepts a scalar ``b`` (the box ``[-b, b]^D``), ``(lo, hi)`` scalars for every axis, or
    a per-axis ``(D, 2)`` array.

    Parameters
    ----------
    bounds : float, (2,) or (D, 2) array_like
        The box: ``b`` (``[-|b|, |b|]`` on every axis), ``(lo, hi)`` for every axis, or one row per axis.
    dim : int
        Dimension ``D`` of the network's input.

    Returns
    -------
    (D, 2) float64 ndarray
        ``[[lo_0, hi_0], ...]`` with finite ``lo < hi`` on every axis.

    Raises
    ------
    ValueError
        For non-numbers, a wrong shape, NaN or inf, or an axis with ``lo >= hi``.

    Examples
    --------
    >>> as_bounds(0.5, dim=2).tolist()
    [[-0.5, 0.5], [-0.5, 0.5]]
    >>> as_bounds((0, 2), dim=2).tolist()
    [[0.0, 2.0], [0.0, 2.0]]
    >>> as_bounds([[0, 1], [1, 0]], dim=2)
    Traceback (most recent call last):
    ...
    ValueError: bounds: axis 1 has lo=1.0 >= hi=0.0; every axis needs lo < hi (a box of positive width)
    """
    try:
        arr = np.asarray(bounds, dtype=np.float64) if bounds is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is None:
        raise ValueError(f"bounds must be numbers: a scalar b (the box [-b, b]^{dim}), (lo, hi) for every axis or "
                         f"a ({dim}, 2) array; got {bounds!r}")
    if arr.ndim == 0:
        arr = np.array([-abs(float(arr)), abs(float(arr))])
    if arr.shape == (2,):
        arr = np.tile(arr, (dim, 1))
    if arr.shape != (dim, 2):
        raise ValueError(
            f"bounds must be (lo, hi) or a ({dim}, 2) array for a {dim}-D network, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"bounds contain NaN or inf: {arr.tolist()}; give a finite box")
    if not (arr[:, 0] < arr[:, 1]).all():
        bad = int(np.argmax(arr[:, 0] >= arr[:, 1]))
        raise ValueError(f"bounds: axis {bad} has lo={arr[bad, 0]} >= hi={arr[bad, 1]}; every axis needs lo < hi "
                         "(a box of positive width)")
    return arr


# Fewer representable coordinates than this across an axis of the box cannot place vertices.
_MIN_ULPS_ACROSS = 2**12


def check_box(net: PLGraph | PLNetwork, b: np.ndarray, dtype: torch.dtype, level: float = 0.0) -> None:
    """Refuse a box (``(D, 2)`` float64, from :func:`as_bounds`) on which ``dtype`` cannot
    answer: coordinates beyond its range, an axis so thin for its offset that few
    coordinates are representable across it, first-layer hyperplanes closer to the origin than
    the box's rounding scale (their detail would be lost), or network values so large that
    bounding them overflows (linear bound propagation multiplies two of them). Raises ``ValueError``.

    In float32, first-layer hyperplanes too close to the origin only warn (ordinary networks
    have some; float64 resolves them); in float64 they are refused.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network to extract.
    b : (D, 2) float64 ndarray
        The box, as :func:`as_bounds` returns it.
    dtype : torch.dtype
        float32 or float64: the dtype the extraction will compute in.
    level : float
        The level set to extract; counts towards the values to bound.

    Raises
    ------
    ValueError
        Naming the axis or the values at fault and what to do (scale or translate the box, use float64).

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import random_network
    >>> net = random_network(3, [8], seed=0)
    >>> check_box(net, as_bounds(1.0), torch.float64)  # accepted: returns None
    >>> check_box(net, as_bounds([[-1, 1], [-1, 1], [1e6, 1e6 + 1e-7]]), torch.float64)
    Traceback (most recent call last):
    ...
    ValueError: bounds: axis 2 [1000000.0, 1000000.0000001] is 1e-07 wide at an offset of 1e+06: ...
    """
    fi = torch.finfo(dtype)
    name = str(dtype).removeprefix("torch.")
    mag = np.abs(b).max(1)
    width = b[:, 1] - b[:, 0]
    for ax in range(len(b)):
        if not np.isfinite(width[ax]) or mag[ax] > fi.max / 4:
            raise ValueError(f"bounds: axis {ax} [{b[ax, 0]:g}, {b[ax, 1]:g}] exceeds the {name} range; scale "
                             "the box down and the network's first-layer weights up by the same factor")
        if width[ax] < _MIN_ULPS_ACROSS * fi.eps * mag[ax]:
            raise ValueError(
                f"bounds: axis {ax} [{float(b[ax, 0])!r}, {float(b[ax, 1])!r}] is {width[ax]:.3g} wide at an offset of "
                f"{mag[ax]:.3g}: {name} has only ~{width[ax] / (fi.eps * mag[ax]):.0f} coordinates across it, too "
                "few to place vertices; translate the box (and the network's first-layer bias) towards the origin"
                + (", or use dtype=float64" if dtype != torch.float64 else ""))
    netd = as_graph(net).to(dtype=torch.float64, device="cpu")
    with torch.no_grad():
        lo, hi = torch.as_tensor(b[:, 0])[None], torch.as_tensor(b[:, 1])[None]
        pre = layer_bounds(netd, lo, hi, crown_hidden=False)
    reach = max(max(float(p[0].abs().max()), float(p[1].abs().max())) for p in pre)
    reach = max(reach, abs(level))
    limit = math.sqrt(fi.max) / 2**10
    if not reach <= limit:
        raise ValueError(
            f"over this box the network's pre-activations may reach {reach:.3g}, beyond what {name} can bound "
            f"(~{limit:.3g}); scale the box down and the network's first-layer weights up by the same factor "
            "(the geometry only scales)")
    # A first-layer hyperplane off the origin by less than the box's rounding scale cannot be
    # placed: its offset is below the tolerance every neuron's sign decision allows for. Layer 0
    # reads the input (and the encoder's features, whose magnitude over the box counts too).
    first = netd.layers[0] if netd.n_layers else netd.output
    scale = _rounding_scale(first, source_magnitudes(netd, lo[0], hi[0], pre))
    rel = first.bias.abs() / (scale - first.bias.abs()).clamp(min=fi.tiny)
    lost = int(((rel > 0) & (rel < 2**16 * fi.eps)).sum())
    if not lost:
        return
    msg = (f"{lost} first-layer hyperplanes pass the origin closer than {name} resolves over this box (offsets "
           f"below {2**16 * fi.eps:.1g} of the box's scale): the network's detail near the origin is below the "
           "box's resolution and its mesh would be wrong there; shrink the box to where the surface is")
    if dtype == torch.float64:  # the modes would disagree (589/580/580 polygons over +-1e12): refuse
        raise ValueError(f"bounds: {msg}")
    # float32 resolves only ~1e-3 of a box: ordinary networks have such planes; warn, and point to float64
    warnings.warn(f"{msg}, or use dtype=float64", stacklevel=3)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """float64 unless asked otherwise: exactness is the product, and float64 makes
    degenerate positions (vertices on later hyperplanes) far rarer; the extra cost is small
    because the work is dominated by index bookkeeping, not arithmetic.

    Parameters
    ----------
    dtype : torch.dtype, str or None
        ``None`` (float64), ``torch.float32`` / ``torch.float64``, or one of the names
        ``"float32"``, ``"float"``, ``"float64"``, ``"double"``.

    Returns
    -------
    torch.dtype
        ``torch.float32`` or ``torch.float64``.

    Raises
    ------
    ValueError
        For any other dtype or name.

    Examples
    --------
    >>> import torch
    >>> resolve_dtype(None), resolve_dtype("float32"), resolve_dtype(torch.float64)
    (torch.float64, torch.float32, torch.float64)
    >>> resolve_dtype(torch.float16)
    Traceback (most recent call last):
    ...
    ValueError: dtype must be float32 or float64, got torch.float16
    """
    if dtype is None:
        return torch.float64
    given = dtype
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64,
                 "float": torch.float32}.get(dtype, None)  # type: ignore[assignment]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {given!r}")
    return dtype


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Switch TF32 off (it would round matmuls to 10 mantissa bits) and restore it after.

    Yields
    ------
    None
        Inside the ``with`` block, ``torch.backends.cuda.matmul.allow_tf32`` and
        ``torch.backends.cudnn.allow_tf32`` are False; both get their old values back on exit.

    Examples
    --------
    >>> import torch
    >>> old = torch.backends.cudnn.allow_tf32
    >>> with no_tf32():
    ...     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    (False, False)
    >>> torch.backends.cudnn.allow_tf32 == old
    True
    """
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
