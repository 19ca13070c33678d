"""Resource guards of the extraction entry points: memory budget, and arguments checked and
costed before anything is allocated.

:func:`default_memory_limit` is the budget an extraction may hold when the caller gives
none: 80% of the smallest of the memory available now (``MemAvailable``), what the
address-space limit (``ulimit -v``, ``RLIMIT_AS``) still leaves this process, and what the
control group (container) still allows. :func:`check_extract_arguments` refuses, with one
message naming the argument and what to do, arguments that are the wrong type, out of range,
or whose first allocation alone would exceed that budget (``tiles=10000`` asks for 10^12
tiles; ``seeds=4096`` for a 4097^3 grid), before any of it is allocated.
"""

from __future__ import annotations

import math
import numbers
import resource
from pathlib import Path
from typing import Any

# Surface mode's band grid is refined coarse to fine; the last level bounds every cell near the
# surface, about 6 * res^(D-1) cells in 3D (a 3x16 network: band=256 takes 40 s on one core,
# 4x per doubling). A finer band costs far more than it can save.
MAX_BAND_SURFACE_CELLS = 2**18
MAX_WORKERS = 256


class ArgumentError(ValueError):
    """An argument of an extraction (or an app option) is invalid; the message names it and says what to do.

    A ``ValueError``, so that callers catching that keep working.

    Examples
    --------
    >>> try:
    ...     check_int("workers", 0, 1)
    ... except ValueError as err:
    ...     print(type(err).__name__, err)
    ArgumentError workers must be >= 1, got 0
    """


def _read_kib(path: str, key: str) -> int | None:
    """The ``key:`` field, in KiB, of a ``/proc`` file such as ``/proc/meminfo``; ``None`` where unknown."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> float | None:
    """Bytes the cgroup v2 memory limit still allows (``memory.max - memory.current``), else ``None``."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0.0, float(int(limit) - int((base / "memory.current").read_text().strip())))
    except (OSError, ValueError):
        return None


def _address_space_room() -> float | None:
    """Bytes of address space ``RLIMIT_AS`` (``ulimit -v``) still leaves this process, else ``None``.

    The soft limit counts virtual memory, which a torch process already holds a lot of
    (shared libraries, thread stacks): the room is the limit minus the current ``VmSize``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    used = _read_kib("/proc/self/status", "VmSize")
    return max(0.0, float(soft - (used or 0) * 1024))


def available_bytes() -> float | None:
    """The smallest of ``MemAvailable``, the ``RLIMIT_AS`` room and the cgroup room, in bytes;
    ``None`` where none is known.

    Returns
    -------
    float or None
        Bytes this process may still allocate; ``None`` where ``/proc`` and the cgroup say nothing
        and no address-space limit is set (e.g. macOS without ``ulimit -v``).

    Examples
    --------
    >>> room = available_bytes()
    >>> room is None or room >= 0
    True
    """
    avail = _read_kib("/proc/meminfo", "MemAvailable")
    known = [v for v in (None if avail is None else avail * 1024.0, _address_space_room(), _cgroup_room())
             if v is not None]
    return min(known) if known else None


def default_memory_limit() -> float | None:
    """80% of :func:`available_bytes` (memory available now, ``ulimit -v`` and the cgroup
    honoured), or ``None`` where unknown.

    Returns
    -------
    float or None
        A budget in bytes; it changes as the machine's free memory does.

    Examples
    --------
    >>> limit = default_memory_limit()
    >>> limit is None or limit >= 0
    True
    """
    avail = available_bytes()
    return None if avail is None else 0.8 * avail


def check_memory_limit(memory_limit: Any) -> float | None:
    """``memory_limit`` as a float (bytes) or ``None`` (the default budget); refuses what would
    silently switch the guard off or stop at once: NaN, inf, zero, negative, non-numbers.

    Parameters
    ----------
    memory_limit : float, int or None
        A budget in bytes, or ``None`` for the default (:func:`default_memory_limit`).

    Returns
    -------
    float or None
        The budget as a float, or ``None``.

    Raises
    ------
    ArgumentError
        For a bool, a non-number, NaN, inf, zero or a negative number.

    Examples
    --------
    >>> check_memory_limit(2**30), check_memory_limit(None)
    (1073741824.0, None)
    >>> check_memory_limit(float("inf"))
    Traceback (most recent call last):
    ...
    nsr.limits.ArgumentError: memory_limit must be a finite positive number of bytes, got inf; ...
    """
    if memory_limit is None:
        return None
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, numbers.Real):
        raise ArgumentError(f"memory_limit must be a number of bytes or None (the default), got {memory_limit!r}")
    value = float(memory_limit)
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(
            f"memory_limit must be a finite positive number of bytes, got {memory_limit!r}; "
            "pass None for the default (80% of the available memory)"
        )
    return value


def check_int(name: str, value: Any, lo: int, hi: int | None = None, hint: str = "") -> int:
    """``value`` as an int in ``[lo, hi]``, else :class:`ArgumentError` naming ``name``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : int or float
        An integer, or a float with an integer value (``4.0``, as YAML may give); bools are refused.
    lo : int
        Smallest value accepted.
    hi : int, optional
        Largest value accepted; ``None`` for no upper limit.
    hint : str
        Appended to the message (what the argument means).

    Returns
    -------
    int

    Raises
    ------
    ArgumentError
        For a non-integer or a value outside ``[lo, hi]``.

    Examples
    --------
    >>> check_int("tiles", 4.0, 1)
    4
    >>> check_int("workers", 300, 1, 256)
    Traceback (most recent call last):
    ...
    nsr.limits.ArgumentError: workers must be between 1 and 256, got 300
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok:
        raise ArgumentError(f"{name} must be an integer, got {value!r}{hint}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ArgumentError(f"{name} must be {rng}, got {value}{hint}")
    return int(value)


def check_level(level: Any) -> float:
    """The level as a finite float.

    Parameters
    ----------
    level : float or int
        The level set to extract.

    Returns
    -------
    float

    Raises
    ------
    ArgumentError
        For a bool, a non-number, NaN or inf.

    Examples
    --------
    >>> check_level(0)
    0.0
    >>> check_level("0.1")
    Traceback (most recent call last):
    ...
    nsr.limits.ArgumentError: level must be a finite number, got '0.1'
    """
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(float(level)):
        raise ArgumentError(f"level must be a finite number, got {level!r}")
    return float(level)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _refuse_if_over(name: str, need: float, limit: float | None, what: str, todo: str) -> None:
    if limit is not None and need > limit:
        raise ArgumentError(
            f"{name}: {what} needs at least {_gib(need)} before any work, over the memory limit of {_gib(limit)} "
            f"(memory_limit; default 80% of the available memory); {todo}"
        )


def tile_bytes(dim: int, n_neurons: int, max_width: int, itemsize: int) -> int:
    """A lower bound on the bytes one surface-mode tile holds before it is subdivided: its box
    skeleton (``2^D`` vertices with coordinates, constraint ids, packed signs, tile id;
    ``D 2^(D-1)`` edges with their ids) and its rows of the output bounds (lower and upper,
    pre- and post-activation, of the widest layer).

    Parameters
    ----------
    dim : int
        Input dimension ``D``.
    n_neurons : int
        Neurons of the network (constraints besides the box's ``2 D`` facets and the output).
    max_width : int
        Width of the widest layer.
    itemsize : int
        Bytes per coordinate (8 for float64).

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    In 3D with 24 neurons in float64: 8 vertices of ``24 + 12 + 8 + 8`` bytes, 12 edges of
    ``8 + 8`` bytes and ``4 * 8`` bounds of 8 bytes:

    >>> tile_bytes(3, 24, 8, 8) == 8 * 52 + 12 * 16 + 4 * 8 * 8
    True
    """
    words = (n_neurons + 2 * dim + 1 + 63) // 64
    vertex = dim * itemsize + 4 * dim + 8 * words + 8
    edge = 8 + 4 * (dim - 1)
    return 2**dim * vertex + dim * 2 ** (dim - 1) * edge + 4 * max_width * itemsize


def seed_grid_bytes(resolution: int, dim: int, itemsize: int) -> int:
    """A lower bound on the bytes of track mode's seed grid: ``(R+1)^D`` points (the coordinate
    axes broadcast, then stacked) and their values.

    Parameters
    ----------
    resolution : int
        Cells per axis ``R`` of the seed grid.
    dim : int
        Input dimension ``D``.
    itemsize : int
        Bytes per number.

    Returns
    -------
    int
        ``(R + 1)^D (2 D + 1) itemsize``.

    Examples
    --------
    >>> seed_grid_bytes(64, 3, 8) == 65**3 * 7 * 8
    True
    """
    return (resolution + 1) ** dim * (2 * dim + 1) * itemsize


def check_extract_arguments(
    *, dim: int, n_neurons: int, max_width: int, itemsize: int, mode: str, level: Any = 0.0,
    tiles: Any = None, band: Any = None, workers: Any = 1, seeds: Any = None, memory_limit: Any = None,
    close: Any = False, progress: Any = True,
) -> dict[str, Any]:
    """Check the arguments of :func:`nsr.extract_mesh` before any allocation; return them
    normalized (``level`` float, ``memory_limit`` float or ``None``, ints as ints).

    Raises :class:`ArgumentError` (a ``ValueError``) naming the argument and what to do, for a
    wrong type or range, or when the first allocation the argument implies alone exceeds the
    memory limit (the given one, else :func:`default_memory_limit`).

    Parameters
    ----------
    dim : int
        Input dimension ``D`` of the network.
    n_neurons : int
        Its number of neurons.
    max_width : int
        Width of its widest layer.
    itemsize : int
        Bytes per number of the extraction's dtype.
    mode : {"surface", "complex", "track"}
        The extraction mode.
    level : float
        The level set.
    tiles : int, optional
        Tiles per axis (surface mode); checked against the budget.
    band : int, optional
        Occupancy-grid cells per axis, a power of two or 0 (off); at most
        :data:`MAX_BAND_SURFACE_CELLS` ``^(1/(D-1))``.
    workers : int
        Processes, ``1..MAX_WORKERS``.
    seeds : int or (M, D) array_like, optional
        A seed-grid resolution (checked by :func:`check_seed_grid`) or points (checked by the tracker).
    memory_limit : float, optional
        Budget in bytes; ``None`` for the default.
    close, progress : bool
        Must be bools.

    Returns
    -------
    dict
        ``level`` (float), ``memory_limit`` (float or None) and ``workers`` (int) always; ``tiles``,
        ``band`` and ``seeds`` (ints) where given as numbers.

    Raises
    ------
    ArgumentError
        Naming the first invalid argument.

    Examples
    --------
    >>> args = dict(dim=3, n_neurons=24, max_width=8, itemsize=8, mode="surface")
    >>> check_extract_arguments(**args, tiles=2.0, band=16)
    {'level': 0.0, 'memory_limit': None, 'workers': 1, 'tiles': 2, 'band': 16}
    >>> check_extract_arguments(**args, tiles=10000, memory_limit=2**30)
    Traceback (most recent call last):
    ...
    nsr.limits.ArgumentError: tiles=10000: 1e+12 tiles (10000 per axis in 3D) needs at least ... GiB before any ...
    """
    if mode not in ("surface", "complex", "track", "auto"):
        raise ArgumentError(f"mode must be 'surface', 'complex', 'track' or 'auto', got {mode!r}")
    for name, flag in (("close", close), ("progress", progress)):
        if not isinstance(flag, bool):
            raise ArgumentError(f"{name} must be True or False, got {flag!r}")
    out: dict[str, Any] = {"level": check_level(level), "memory_limit": check_memory_limit(memory_limit)}
    budget = out["memory_limit"] if out["memory_limit"] is not None else default_memory_limit()
    out["workers"] = check_int("workers", workers, 1, MAX_WORKERS, " (processes for surface mode)")
    if tiles is not None:
        out["tiles"] = check_int("tiles", tiles, 1, None, " (tiles per axis in surface mode; None: automatic)")
        n_tiles = out["tiles"] ** dim
        _refuse_if_over(f"tiles={tiles}", float(n_tiles) * tile_bytes(dim, n_neurons, max_width, itemsize), budget,
                        f"{n_tiles:.3g} tiles ({tiles} per axis in {dim}D)",
                        "use fewer tiles per axis (None picks 2 or 8)")
    if band is not None:
        res = check_int("band", band, 0, None, " (cells per axis, a power of two, or 0 for off)")
        if res & (res - 1):
            raise ArgumentError(f"band must be 0 (off) or a power of two, got {res}")
        if res ** (dim - 1) > MAX_BAND_SURFACE_CELLS:
            top = 2 ** int(math.log2(MAX_BAND_SURFACE_CELLS) // (dim - 1))
            raise ArgumentError(
                f"band={res} would bound the network on about {res ** (dim - 1):.2g} cells near the surface "
                f"(time grows 4x per doubling in 3D; band=256 takes ~40 s on a 3x16 network); use band <= {top} "
                "or 0 (off)"
            )
        _refuse_if_over(f"band={res}", float(res) ** dim, budget, f"the {res}^{dim} occupancy grid",
                        "use a smaller band or 0 (off)")
        out["band"] = res
    if isinstance(seeds, numbers.Number):  # a grid resolution; (M, D) points are checked by the tracker
        out["seeds"] = check_seed_grid(seeds, dim, itemsize, budget)
    return out


def check_seed_grid(seeds: Any, dim: int, itemsize: int, memory_limit: float | None = None) -> int:
    """A seed-grid resolution for track mode, refused when its grid alone exceeds the memory limit.

    Parameters
    ----------
    seeds : int
        Cells per axis of the seed grid, at least 1.
    dim : int
        Input dimension ``D``.
    itemsize : int
        Bytes per number.
    memory_limit : float, optional
        Budget in bytes; ``None``: :func:`default_memory_limit`.

    Returns
    -------
    int
        The resolution.

    Raises
    ------
    ArgumentError
        For a non-integer, a value below 1, or a grid over the budget.

    Examples
    --------
    >>> check_seed_grid(64, 3, 8, memory_limit=2**30)
    64
    >>> check_seed_grid(4096, 3, 8, memory_limit=2**30)
    Traceback (most recent call last):
    ...
    nsr.limits.ArgumentError: seeds=4096: the 4097^3 seed grid needs at least 3,586.6 GiB before any work, ...
    """
    res = check_int("seeds", seeds, 1, None, " (a seed-grid resolution, or (M, 3) points)")
    budget = memory_limit if memory_limit is not None else default_memory_limit()
    _refuse_if_over(f"seeds={res}", float(seed_grid_bytes(res, dim, itemsize)), budget,
                    f"the {res + 1}^{dim} seed grid", "use a coarser seed grid (default 64) or seed points")
    return res


def check_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` that exists here, else :class:`ArgumentError` saying which do.

    Parameters
    ----------
    device : str or torch.device
        ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns
    -------
    torch.device

    Raises
    ------
    ArgumentError
        For a name torch does not parse, a CUDA or MPS device this machine lacks, or another device type.

    Examples
    --------
    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("nonsense")
    Traceback (most recent call last):
    ...
    nsr.limits.ArgumentError: device=nonsense is not a device name; use cpu, cuda or cuda:N
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(f"device={device} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ArgumentError(f"device={device}: no CUDA device is available here "
                                "(torch.cuda.is_available() is False); use device=cpu")
        if dev.index is not None and dev.index >= n:
            raise ArgumentError(f"device={device}: there are only {n} CUDA devices (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ArgumentError(f"device={device}: MPS is not available here; use device=cpu")
    elif dev.type != "cpu":
        raise ArgumentError(f"device={device}: nsr runs on cpu or cuda (or mps), not {dev.type}")
    return dev


def empty_level_set_message(net: Any, bounds: Any, level: float, n_samples: int = 4096) -> str:
    """Why an extraction found no level set, in words that are true for this network and box.

    The output's range over the box is bounded (linear bound propagation, sound) and sampled:
    a network provably constant at ``level`` (both bounds equal to it), or equal to it at every
    sample, has no surface because every point is on the level set; otherwise the message
    gives the sampled range (and the proven bounds) on one side of the level.

    Parameters
    ----------
    net : PLNetwork or PLGraph
        The network (its ``dtype`` and ``device`` are used for the samples).
    bounds : (D, 2) array_like
        The box.
    level : float
        The level that was extracted.
    n_samples : int
        Uniform samples of the box (seeded: the message is reproducible).

    Returns
    -------
    str
        One sentence, ending with what to check.

    Examples
    --------
    The octahedron network ``|x| + |y| + |z| - 0.5`` stays below 100 on ``[-1, 1]^3`` (its true
    range there is ``[-0.5, 2.5]``):

    >>> from nsr.networks import octahedron_network
    >>> msg = empty_level_set_message(octahedron_network(), [[-1, 1]] * 3, 100.0)
    >>> msg.startswith("the network does not reach the level 100 inside the box: it stays below it")
    True
    >>> "proven bounds [-3.5, 2.5]" in msg  # sound: the true maximum 2.5 is reached at the corners
    True
    """
    import numpy as np
    import torch

    from nsr.extraction.pruning import output_bounds

    b = torch.as_tensor(np.asarray(bounds), dtype=net.dtype, device=net.device)
    with torch.no_grad():
        olo, ohi = (float(v[0]) for v in output_bounds(net, b[None, :, 0], b[None, :, 1]))
        gen = torch.Generator(device="cpu").manual_seed(0)
        u = torch.rand(n_samples, b.shape[0], generator=gen, dtype=net.dtype).to(net.device)
        f = net(b[:, 0] + u * (b[:, 1] - b[:, 0])).reshape(-1)
    fmin, fmax = float(f.min()), float(f.max())
    if olo == ohi == level:
        return (f"the network is constant {level:g} on the box (proven by its output bounds): every point is on "
                "the level set, so there is no surface to extract; empty mesh")
    if fmin == fmax == level:
        return (f"the network equals {level:g} at all {n_samples} sampled points of the box: the level set fills "
                "(most of) the box rather than bounding a shape, so there is no surface to extract; empty mesh")
    side = "above" if fmin > level else "below" if fmax < level else "on one side of"
    return (f"the network does not reach the level {level:g} inside the box: it stays {side} it (sampled range "
            f"[{fmin:.3g}, {fmax:.3g}], proven bounds [{olo:.3g}, {ohi:.3g}]): empty mesh; check the box (bounds) "
            "and the level")
