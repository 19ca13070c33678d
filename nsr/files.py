"""Writing files safely: one atomic-write helper for every file nsr creates (``nsr.files``).

A file appears under its final name complete or not at all: the bytes go to a short
temporary name in the same folder (``.<8 random hex>.tmp``, so a target name of any legal
length still works), are flushed to disk, and the temporary file is renamed over the
target. New files get the permissions of ``open()`` (``0o666`` less the umask, e.g. 0644
under umask 022), unlike ``tempfile.mkstemp``, whose files are always 0600.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

_TRIES = 16  # random names collide with probability ~2^-32 per try


def _open_temporary(folder: Path) -> tuple[Path, int]:
    """Create ``folder/.<8 hex>.tmp`` exclusively; returns its path and file descriptor."""
    for _ in range(_TRIES):
        tmp = folder / f".{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in {folder}: {_TRIES} random names were taken")


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file object) to ``path`` atomically.

    Raises ``FileNotFoundError`` when the folder does not exist, ``PermissionError`` when it
    is not writable, ``IsADirectoryError`` when ``path`` is a folder. Any failure, including
    ``KeyboardInterrupt``, removes the temporary file and leaves an existing ``path`` as it was.

    Parameters
    ----------
    path : str or Path
        The final name.
    data : bytes or callable
        The content, or a function ``write(fh)`` writing it to a binary file object.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    PermissionError
        If the folder is not writable.
    IsADirectoryError
        If ``path`` is a folder.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.files import atomic_write
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     done = atomic_write(Path(tmp) / "a.txt", b"hello")
    ...     _ = atomic_write(Path(tmp) / "b.bin", lambda fh: fh.write(bytes(3)))
    ...     print(done.read_bytes(), sorted(p.name for p in Path(tmp).iterdir()))
    b'hello' ['a.txt', 'b.bin']
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    try:
        tmp, fd = _open_temporary(folder)
    except PermissionError as err:
        raise PermissionError(f"cannot write to {folder}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not reach the disk before the bytes
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------------------
# Saved complexes: read as data, validated before use
# --------------------------------------------------------------------------------------

COMPLEX_FORMAT = "nsr.PolyhedralComplex"
COMPLEX_VERSION = 1
# arrays of a network saved as a PLGraph state dict (skip blocks, leaky neurons, ...) carry this prefix
GRAPH_PREFIX = "graph."
_MAX_LAYERS = 10_000


class ComplexFileError(ValueError):
    """A file that is not a complete, consistent complex written by ``PolyhedralComplex.save``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.files import ComplexFileError, read_complex_file
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     (Path(tmp) / "c.npz").write_bytes(b"not a zip")
    ...     try:
    ...         read_complex_file(Path(tmp) / "c.npz")
    ...     except ComplexFileError as err:
    ...         print("not a readable complex file" in str(err))
    9
    True
    """


def _array_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Declared shape and dtype of one ``.npy`` member, and its uncompressed size in bytes."""
    info = zf.getinfo(name)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"array '{name}' has .npy format version {version}; nsr writes 1.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    return tuple(int(s) for s in shape), np.dtype(dtype), int(info.file_size)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, refusing object arrays and shapes larger than the data."""
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                shape, dtype, size = _array_header(zf, name)
                if dtype.hasobject:
                    raise ComplexFileError(f"{path}: array '{name}' holds Python objects, which nsr never "
                                           "unpickles; complex files hold numbers only")
                if math.prod(shape) * dtype.itemsize > size:
                    raise ComplexFileError(f"{path}: array '{name}' declares shape {shape} of {dtype}, more than "
                                           f"the {size} bytes stored (truncated or corrupt file)")
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except ComplexFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        # numpy's own texts may suggest allow_pickle=True; never pass that advice on
        detail = "" if "pickle" in str(err) else f": {type(err).__name__}: {err}"
        raise ComplexFileError(f"{path}: not a readable complex file (truncated or corrupt?){detail}") from None


def _meta(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    raw = arrays.get("meta")
    if raw is None or raw.shape != () or raw.dtype.kind != "U":
        raise ComplexFileError(f"{path}: not an nsr complex file (no 'meta' record)")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise ComplexFileError(f"{path}: its 'meta' record is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != COMPLEX_FORMAT:
        raise ComplexFileError(f"{path}: not an nsr complex file (format is not {COMPLEX_FORMAT!r})")
    if meta.get("version") != COMPLEX_VERSION:
        raise ComplexFileError(f"{path}: complex file version {meta.get('version')!r}; this nsr reads version "
                               f"{COMPLEX_VERSION}: extract the complex again")
    n_layers, level = meta.get("n_layers"), meta.get("level")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or not 1 <= n_layers <= _MAX_LAYERS:
        raise ComplexFileError(f"{path}: 'n_layers' must be an integer in [1, {_MAX_LAYERS}], got {n_layers!r}")
    if level is not None and (not isinstance(level, (int, float)) or not math.isfinite(level)):
        raise ComplexFileError(f"{path}: 'level' must be a finite number or null, got {level!r}")
    if not isinstance(meta.get("stats", {}), (dict, type(None))):
        raise ComplexFileError(f"{path}: 'stats' must be a mapping")
    return meta


def _need(path: Path, arrays: dict[str, np.ndarray], name: str, kind: str, shape: tuple[int | None, ...]
          ) -> np.ndarray:
    """``arrays[name]`` with dtype kind in ``kind`` ("f" float, "iu" integer) and ``shape`` (None: any)."""
    if name not in arrays:
        raise ComplexFileError(f"{path}: array '{name}' is missing (truncated or not written by nsr)")
    a = arrays[name]
    if a.dtype.kind not in kind:
        want = "float" if kind == "f" else "integer"
        raise ComplexFileError(f"{path}: array '{name}' has dtype {a.dtype}, expected {want}")
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ComplexFileError(f"{path}: array '{name}' has shape {a.shape}, expected {want}")
    if kind == "f" and not np.isfinite(a).all():
        raise ComplexFileError(f"{path}: array '{name}' contains NaN or inf")
    return a


def _ids_in_range(path: Path, name: str, a: np.ndarray, n: int, what: str) -> None:
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ComplexFileError(f"{path}: '{name}' holds {what} outside [0, {n}): min {a.min()}, max {a.max()}")


def _graph_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Any:
    """The :class:`~nsr.pl.PLGraph` stored under :data:`GRAPH_PREFIX` (numbers only), validated by
    :meth:`~nsr.pl.PLGraph.from_state_dict`."""
    from nsr.pl.graph import NotPiecewiseAffineError, PLGraph

    sd = {}
    for name, a in arrays.items():
        if not name.startswith(GRAPH_PREFIX):
            continue
        if a.dtype.kind not in "fiu":
            raise ComplexFileError(f"{path}: array '{name}' has dtype {a.dtype}, expected numbers")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ComplexFileError(f"{path}: array '{name}' contains NaN or inf")
        sd[name[len(GRAPH_PREFIX):]] = torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a)
    if not sd:
        raise ComplexFileError(f"{path}: its network arrays ('{GRAPH_PREFIX}*') are missing")
    try:
        return PLGraph.from_state_dict(sd).to(dtype=torch.float64)
    except (NotPiecewiseAffineError, KeyError, ValueError, IndexError, RuntimeError) as err:
        raise ComplexFileError(f"{path}: its network is not valid: {err}") from err


def read_complex_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a file written by ``PolyhedralComplex.save`` (never unpickling anything).

    Returns ``meta`` (dict), ``net`` (:class:`~nsr.networks.PLNetwork`, or a :class:`~nsr.pl.PLGraph` for
    networks with skip blocks or other neurons; float64), ``bounds``
    ``(D, 2)``, ``vertices`` ``(V, D)`` float, ``edges`` ``(E, 2)``, ``vertex_zeros`` ``(V, D)``,
    ``edge_zeros`` ``(E, D-1)`` and ``vertex_signs`` ``(V, W)`` int64, all checked: shapes, dtypes,
    finite numbers, ``lo < hi``, vertex and constraint ids in range, a valid ReLU network of
    input dimension D. Raises ``FileNotFoundError`` or :class:`ComplexFileError` naming the file
    and what is wrong.

    Parameters
    ----------
    path : str or Path
        An ``.npz`` file written by ``PolyhedralComplex.save``.

    Returns
    -------
    dict of str to Any
        The keys above.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ComplexFileError
        If the file is not a complete, consistent complex.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr import extract_complex
    >>> from nsr.files import read_complex_file
    >>> from nsr.networks import random_network
    >>> cx = extract_complex(random_network(2, [8], seed=0), (-1, 1), progress=False)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     data = read_complex_file(cx.save(Path(tmp) / "cx.npz"))
    >>> data["vertices"].shape[1], data["bounds"].tolist(), data["net"].widths
    (2, [[-1.0, 1.0], [-1.0, 1.0]], [8])
    >>> len(data["vertices"]) == cx.f_vector[0]
    True
    """
    from nsr.networks import NetworkError, PLNetwork

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"complex file not found: {path}")
    if not path.is_file():
        raise ComplexFileError(f"{path}: not a regular file")
    arrays = _read_arrays(path)
    meta = _meta(path, arrays)
    bounds = _need(path, arrays, "bounds", "f", (None, 2)).astype(np.float64)
    d = bounds.shape[0]
    if d < 1 or not (bounds[:, 0] < bounds[:, 1]).all():
        raise ComplexFileError(f"{path}: 'bounds' must be (D, 2) rows with lo < hi, got {bounds.tolist()}")
    if meta.get("network", "mlp") == "graph":
        net = _graph_from_arrays(path, arrays)
    else:
        layers = [(_need(path, arrays, f"weight_{i}", "f", (None, None)),
                   _need(path, arrays, f"bias_{i}", "f", (None,))) for i in range(meta["n_layers"])]
        try:
            net = PLNetwork([torch.from_numpy(w.astype(np.float64)) for w, _ in layers],
                            [torch.from_numpy(b.astype(np.float64)) for _, b in layers])
        except NetworkError as err:
            raise ComplexFileError(f"{path}: its network is not valid: {err}") from err
    if net.in_dim != d:
        raise ComplexFileError(f"{path}: the network takes {net.in_dim} inputs but the box has {d} dimensions")
    vertices = _need(path, arrays, "vertices", "f", (None, d))
    n_v, n_c = len(vertices), 2 * d + net.n_neurons + 1
    edges = _need(path, arrays, "edges", "iu", (None, 2))
    n_e = len(edges)
    out = {"meta": meta, "net": net, "bounds": bounds, "vertices": vertices, "edges": edges,
           "vertex_zeros": _need(path, arrays, "vertex_zeros", "iu", (n_v, d)),
           "edge_zeros": _need(path, arrays, "edge_zeros", "iu", (n_e, d - 1)),
           "vertex_signs": _need(path, arrays, "vertex_signs", "i", (n_v, max(1, math.ceil(n_c / 64))))}
    _ids_in_range(path, "edges", edges, n_v, "vertex indices")
    _ids_in_range(path, "vertex_zeros", out["vertex_zeros"], n_c, "constraint ids")
    _ids_in_range(path, "edge_zeros", out["edge_zeros"], n_c, "constraint ids")
    return out


# --------------------------------------------------------------------------------------
# Meshes: OBJ, PLY, OFF, STL written by nsr itself (no trimesh in the export path, so a
# Ctrl-C is never swallowed and coordinates are written exactly)
# --------------------------------------------------------------------------------------

MESH_SUFFIXES = (".obj", ".ply", ".off", ".stl")


def write_mesh(path: str | Path, vertices: np.ndarray, sizes: np.ndarray, flat: np.ndarray,
               binary: bool = True) -> Path:
    """Write a mesh atomically; the format follows the suffix of ``path``.

    Polygons are written as n-gon faces (OBJ, PLY, OFF); STL takes triangles only.

    Parameters
    ----------
    path : str or Path
        Destination, ``.obj``, ``.ply``, ``.off`` or ``.stl`` (any case); written through a
        temporary file and a rename (:func:`atomic_write`).
    vertices : (V, 3) float64 ndarray
        Positions, written with 17 significant digits (binary PLY: float64; STL: float32).
    sizes : (F,) int64 ndarray
        Vertex count of each face (PLY: at most 255).
    flat : (sum(sizes),) int64 ndarray
        Vertex indices (0-based) of the faces, concatenated.
    binary : bool
        Binary (little-endian) or ASCII PLY; other formats ignore it.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    ValueError
        For an unknown suffix, a non-triangle face in an STL, or a PLY face of more than 255 vertices.

    Examples
    --------
    A square pyramid, one quad and four triangles; trimesh reads it back closed, with volume
    ``1 * 1 / 3``:

    >>> import tempfile, numpy as np, trimesh
    >>> from pathlib import Path
    >>> v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]])
    >>> sizes = np.array([4, 3, 3, 3, 3])
    >>> flat = np.array([0, 3, 2, 1, 0, 1, 4, 1, 2, 4, 2, 3, 4, 3, 0, 4])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     mesh = trimesh.load(write_mesh(Path(tmp) / "pyramid.obj", v, sizes, flat), process=False)
    >>> mesh.is_watertight, mesh.euler_number, round(float(mesh.volume), 6)
    (True, 2, 0.333333)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"cannot export to '{path.name}': unknown suffix, use one of {MESH_SUFFIXES}")
    vertices = np.ascontiguousarray(vertices, dtype=np.float64)
    sizes, flat = np.asarray(sizes, dtype=np.int64), np.asarray(flat, dtype=np.int64)
    if suffix == ".obj":
        data = _obj_bytes(vertices, sizes, flat)
    elif suffix == ".ply":
        data = _ply_bytes(vertices, sizes, flat, binary=binary)
    elif suffix == ".off":
        data = _off_bytes(vertices, sizes, flat)
    else:
        if len(sizes) and (sizes != 3).any():
            raise ValueError("STL holds triangles only")
        data = _stl_bytes(vertices, flat.reshape(-1, 3))
    return atomic_write(path, data)


def write_triangles(path: str | Path, vertices: np.ndarray, triangles: np.ndarray) -> Path:
    """:func:`write_mesh` for ``(T, 3)`` int triangles.

    Parameters
    ----------
    path : str or Path
        Destination, ``.obj``, ``.ply``, ``.off`` or ``.stl``.
    vertices : (V, 3) float64 ndarray
        Positions.
    triangles : (T, 3) int ndarray
        Vertex indices (0-based) of each triangle.

    Returns
    -------
    Path
        The path written.

    Examples
    --------
    A tetrahedron of volume ``1/6`` through STL:

    >>> import tempfile, numpy as np, trimesh
    >>> from pathlib import Path
    >>> v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0.5, 0.5, 1]])
    >>> tri = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     mesh = trimesh.load(write_triangles(Path(tmp) / "tet.stl", v, tri))
    >>> mesh.is_watertight, round(float(mesh.volume), 6)
    (True, 0.166667)
    """
    tri = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    return write_mesh(path, vertices, np.full(len(tri), 3, dtype=np.int64), tri.reshape(-1))


def _face_lines(sizes: np.ndarray, flat: np.ndarray, base: int, with_count: bool) -> list[str]:
    """One text line per face: its vertex indices (``+ base``), led by its size if ``with_count``."""
    ends = np.cumsum(sizes)
    idx = (flat + base).tolist()
    lead = [f"{n} " if with_count else "" for n in sizes.tolist()]
    return [lead[i] + " ".join(map(str, idx[e - n:e])) for i, (n, e) in enumerate(zip(sizes.tolist(), ends.tolist()))]


def _vertex_lines(vertices: np.ndarray, prefix: str) -> list[str]:
    return [f"{prefix}{x:.17g} {y:.17g} {z:.17g}" for x, y, z in vertices.tolist()]


def _obj_bytes(vertices: np.ndarray, sizes: np.ndarray, flat: np.ndarray) -> bytes:
    lines = ["# exact level-set mesh written by nsr", *_vertex_lines(vertices, "v ")]
    lines += ["f " + line for line in _face_lines(sizes, flat, 1, with_count=False)]
    return ("\n".join(lines) + "\n").encode()


def _off_bytes(vertices: np.ndarray, sizes: np.ndarray, flat: np.ndarray) -> bytes:
    lines = ["OFF", f"{len(vertices)} {len(sizes)} 0", *_vertex_lines(vertices, "")]
    lines += _face_lines(sizes, flat, 0, with_count=True)
    return ("\n".join(lines) + "\n").encode()


def _ply_bytes(vertices: np.ndarray, sizes: np.ndarray, flat: np.ndarray, binary: bool) -> bytes:
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\ncomment exact level-set mesh written by nsr\n"
        f"element vertex {len(vertices)}\nproperty double x\nproperty double y\nproperty double z\n"
        f"element face {len(sizes)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    if len(sizes) and sizes.max() > 255:
        raise ValueError("a polygon has more than 255 vertices, which PLY's uchar vertex count cannot store")
    if not binary:
        body = _vertex_lines(vertices, "") + _face_lines(sizes, flat, 0, with_count=True)
        return header + ("\n".join(body) + "\n").encode() if body else header
    # Interleave (count:uint8, indices:int32*count) per face without a Python loop over faces.
    rec = np.zeros(int(sizes.sum() * 4 + len(sizes)), dtype=np.uint8)
    starts = np.cumsum(sizes * 4 + 1) - (sizes * 4 + 1)
    rec[starts] = sizes.astype(np.uint8)
    mask = np.ones(len(rec), dtype=bool)
    mask[starts] = False
    rec[mask] = flat.astype("<i4").view(np.uint8)
    return b"".join([header, vertices.astype("<f8").tobytes(), rec.tobytes()])


def _stl_bytes(vertices: np.ndarray, triangles: np.ndarray) -> bytes:
    """Binary STL (float32 by the format), unit normals from the vertex order (zero if degenerate)."""
    tri = vertices[triangles]  # (T, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 0)
    rec = np.zeros(len(tri), dtype=[("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])
    rec["normal"], rec["vertices"] = normal, tri
    header = b"binary STL: exact level-set mesh written by nsr".ljust(80, b" ")
    return header + np.uint32(len(tri)).astype("<u4").tobytes() + rec.tobytes()
