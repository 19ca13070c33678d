"""Hostile exports: permissions, long names, interrupted and failed writes, odd targets."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh

import nsr.extraction.surface
import nsr.files
from nsr.extraction.mesh import ExactMesh
from nsr.extraction.surface import extract_mesh
from nsr.networks import octahedron_network


@pytest.fixture(scope="module")
def mesh() -> ExactMesh:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_mesh(octahedron_network(0.5), (-1, 1), progress=False)


FORMATS = [("m.obj", {}), ("m.ply", {}), ("m.ply", {"binary": False}), ("m.off", {}), ("m.stl", {}),
           ("p.obj", {"polygons": True}), ("p.ply", {"polygons": True})]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("name, kw", FORMATS)
def test_exports_honour_the_umask(tmp_path, mesh, name, kw, umask, mode):
    old = os.umask(umask)
    try:
        path = mesh.export(tmp_path / name, **kw)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("name, kw", FORMATS)
def test_a_legal_250_character_name_exports(tmp_path, mesh, name, kw):
    stem, suffix = name.split(".")
    target = tmp_path / (stem * (250 - len(suffix) - 1) + "." + suffix)
    assert len(target.name) == 250
    path = mesh.export(target, **kw)
    back = trimesh.load(path, process=False, force="mesh")
    assert back.area == pytest.approx(mesh.to_trimesh().area, rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("writer, name", [("_stl_bytes", "m.stl"), ("_obj_bytes", "m.obj"), ("_ply_bytes", "m.ply")])
def test_ctrl_c_while_formatting_propagates_and_leaves_no_file(tmp_path, mesh, monkeypatch, writer, name):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nsr.files, writer, interrupted)
    with pytest.raises(KeyboardInterrupt):
        mesh.export(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path, mesh, monkeypatch):
    target = tmp_path / "m.stl"
    target.write_bytes(b"the previous export")

    def interrupted(fd):
        raise KeyboardInterrupt  # the bytes are in the temporary file, not yet renamed

    monkeypatch.setattr(nsr.files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mesh.export(target)
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.stl"]


def test_a_full_disk_leaves_no_file(tmp_path, mesh, monkeypatch):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nsr.files.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        mesh.export(tmp_path / "m.obj")
    assert list(tmp_path.iterdir()) == []


def _file(path: Path) -> Path:
    path.write_text("x")
    return path


ODD_TARGETS = [
    ("a folder of the target's name", lambda d: (d / "m.obj").mkdir() or d / "m.obj", IsADirectoryError, "folder"),
    ("a missing folder", lambda d: d / "missing" / "m.obj", FileNotFoundError, "does not exist"),
    ("a file as the folder", lambda d: _file(d / "f") / "m.obj", FileNotFoundError, "does not exist"),
    ("an unknown suffix", lambda d: d / "m.xyz", ValueError, "unknown suffix"),
    ("no suffix", lambda d: d / "mesh", ValueError, "unknown suffix"),
    ("a name that is too long", lambda d: d / ("m" * 300 + ".obj"), OSError, "too long"),
]


@pytest.mark.parametrize("case, target, error, words", ODD_TARGETS, ids=[c[0] for c in ODD_TARGETS])
def test_odd_targets_give_a_clear_error_and_leave_nothing(tmp_path, mesh, case, target, error, words):
    path = target(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=words):
        mesh.export(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_overwriting_a_symlink_replaces_the_link_not_its_target(tmp_path, mesh):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (tmp_path / "m.obj").symlink_to(precious)
    mesh.export(tmp_path / "m.obj")
    assert precious.read_text() == "keep me"
    assert not (tmp_path / "m.obj").is_symlink()


def test_polygon_options_that_readers_cannot_open_are_refused(tmp_path, mesh):
    with pytest.raises(ValueError, match="binary=False"):
        mesh.export(tmp_path / "p.ply", polygons=True, binary=True)
    with pytest.raises(ValueError, match=".obj and .ply only"):
        mesh.export(tmp_path / "p.stl", polygons=True)
    big = ExactMesh(vertices=np.c_[np.cos(np.arange(300) / 300 * 2 * np.pi), np.sin(np.arange(300) / 300 * 2 * np.pi),
                                   np.zeros(300)], bounds=np.array([[-1.0, 1], [-1, 1], [-1, 1]]),
                    polygons=[np.arange(300)])
    with pytest.raises(ValueError, match="more than 255 vertices"):
        big.export(tmp_path / "big.ply", polygons=True)
    assert list(tmp_path.iterdir()) == []
    # OBJ has no such limit: the 300-gon is written whole and read back with its area
    path = big.export(tmp_path / "big.obj", polygons=True)
    back = trimesh.load(path, process=False, force="mesh")
    assert back.area == pytest.approx(0.5 * 300 * np.sin(2 * np.pi / 300), rel=1e-12)


def test_an_empty_mesh_exports_files_readers_open(tmp_path):
    empty = ExactMesh(vertices=np.zeros((0, 3)), bounds=np.array([[-1.0, 1], [-1, 1], [-1, 1]]))
    for name, kw in FORMATS:
        path = empty.export(tmp_path / name, **kw)
        assert path.stat().st_size > 0
    assert Path(tmp_path / "m.obj").read_text().startswith("#")
