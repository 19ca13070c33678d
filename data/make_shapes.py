"""Regenerate the small shapes in data/ (deterministic; run `python data/make_shapes.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

HERE = Path(__file__).resolve().parent


def main() -> None:
    # A torus (major radius 1, minor 0.35) in its own units, off-centre, to exercise the
    # normalization into the training box and back.
    torus = trimesh.creation.torus(major_radius=1.0, minor_radius=0.35, major_sections=48, minor_sections=24)
    torus.apply_translation([2.0, -1.0, 0.5])
    torus.export(HERE / "torus.obj")
    # An oriented point cloud of a unit sphere (Fibonacci lattice), for surface + eikonal
    # training; written as ASCII PLY with normals.
    n = 1000
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    pts = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    cloud = trimesh.PointCloud(pts)
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\nend_header\n"
    )
    body = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in np.hstack([cloud.vertices, pts]))
    (HERE / "sphere_cloud.ply").write_text(header + body + "\n")


if __name__ == "__main__":
    main()
