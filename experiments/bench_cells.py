"""Benchmark: cells of every dimension of a complex against the time of its extraction.

In one process: extract the complex (float64 by default), then build its cells of every
dimension, incidences, ``f_vector`` and ``euler_characteristic`` with :mod:`nsr.extraction.cells`; with
``--reference`` also with the former method (every key materialized as a row and grouped
with ``group_equal_rows``), on a fresh copy of the same complex, for a ratio in the same run.
Peak memory is the process's resident peak after each step (it only grows).

    python experiments/bench_cells.py                       # the shared bunny networks
    python experiments/bench_cells.py --nets model.pt --bounds -1 1 --reference

Prints a Markdown table; writes ``bench_cells.json`` to ``$NSR_OUT`` (default experiments/out/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from nsr.extraction.bits import bit_values, group_equal_rows
from nsr.extraction.complex import PolyhedralComplex, extract_complex
from nsr.networks import load_network

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reference_cells(cx: PolyhedralComplex) -> list[int]:
    """The former method: materialize every key row, group rows, unique incidences."""
    f = [len(cx.vertices), len(cx.edges)]
    pos, zeros = cx.edge_signs(), cx.edge_zeros.long()
    for _ in range(2, cx.dim + 1):
        keys, owners = [], []
        ar = torch.arange(len(pos))
        for i in range(zeros.shape[1]):
            zi = zeros[:, i]
            rest = torch.cat([zeros[:, :i], zeros[:, i + 1 :]], 1)
            wi, mi = bit_values(zi)
            pk = pos.clone()
            pk[ar, wi] |= mi
            keys.append(torch.cat([pk, rest], 1))
            owners.append(ar)
            sel = torch.nonzero(zi >= 2 * cx.dim).squeeze(1)
            keys.append(torch.cat([pos[sel], rest[sel]], 1))
            owners.append(sel)
        key, owner = torch.cat(keys), torch.cat(owners)
        order, gid = group_equal_rows(key)
        first = torch.ones_like(gid, dtype=torch.bool)
        first[1:] = gid[1:] != gid[:-1]
        reps = key[order[first]]
        torch.unique(torch.stack([owner[order], gid], 1), dim=0)
        w = pos.shape[1]
        pos, zeros = reps[:, :w].contiguous(), reps[:, w:].contiguous()
        f.append(len(pos))
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="*", default=None, help="network files (default: the shared bunny nets)")
    ap.add_argument("--bounds", type=float, nargs=2, default=(-0.5, 0.5))
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", action="store_true", help="also time the former method (much more memory)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    nets = args.nets
    if nets is None:
        names = ("bunny_3d_3x16", "bunny_3d_8x32")
        nets = [str(SHARED / "models" / f"{n}.pt") for n in names if (SHARED / "models" / f"{n}.pt").is_file()]
        if not nets:
            raise SystemExit("../shared/models not found: pass --nets")
    rows = []
    for path in nets:
        net = load_network(path)
        t0 = time.perf_counter()
        cx = extract_complex(net, tuple(args.bounds), dtype=args.dtype, progress=False)
        t_extract = time.perf_counter() - t0
        peak_extract = _peak_gb()
        t0 = time.perf_counter()
        fv, chi = cx.f_vector, cx.euler_characteristic
        n_inc = [int(cx.incidence(k).shape[0]) for k in range(2, cx.dim + 1)]
        t_cells = time.perf_counter() - t0
        row = {"net": Path(path).stem, "f_vector": fv, "euler": chi, "incidences": n_inc,
               "extract_s": t_extract, "cells_s": t_cells, "peak_extract_gb": peak_extract,
               "peak_cells_gb": _peak_gb()}
        if args.reference:
            fresh = PolyhedralComplex(cx.net, cx.bounds, cx.vertices, cx.edges, cx.vertex_zeros, cx.edge_zeros,
                                      cx.vertex_signs)
            del cx
            t0 = time.perf_counter()
            ref_fv = reference_cells(fresh)
            row.update(reference_s=time.perf_counter() - t0, reference_f_vector=ref_fv,
                       peak_reference_gb=_peak_gb())
            assert ref_fv == fv, (ref_fv, fv)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(os.environ.get("NSR_OUT", ROOT / "experiments" / "out"))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "dtype": args.dtype, "threads": args.threads}
    (out / "bench_cells.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\n{meta}\n")
    print("| network | f-vector | Euler | extraction (s) | cells (s) | cells / extraction | former method (s) "
          "| peak after extraction / cells / former (GB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        ref = f"{r['reference_s']:.2f}" if "reference_s" in r else "-"
        peaks = f"{r['peak_extract_gb']:.2f} / {r['peak_cells_gb']:.2f}"
        peaks += f" / {r['peak_reference_gb']:.2f}" if "peak_reference_gb" in r else ""
        print(f"| {r['net']} | {r['f_vector']} | {r['euler']} | {r['extract_s']:.2f} | {r['cells_s']:.2f} "
              f"| {r['cells_s'] / r['extract_s']:.2f} | {ref} | {peaks} |")


if __name__ == "__main__":
    main()
