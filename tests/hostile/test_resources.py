"""Hostile resource requests: arguments that would ask the allocator for terabytes or run
without end are refused before any allocation, the memory budget honours ``ulimit -v``, and the
memory guard's message fits the mode that reached it.

To add a case: a row in ``REFUSED`` (keyword arguments of :func:`nsr.extract_mesh` and a
fragment of the message)."""

from __future__ import annotations

import math
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from nsr.extraction.surface import extract_mesh
from nsr.limits import ArgumentError, default_memory_limit
from nsr.networks import ReLUMLP

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def net() -> ReLUMLP:
    torch.manual_seed(0)
    net = ReLUMLP(3, 16, 3, geometric_init=True, radius=0.3)
    with torch.no_grad():  # generic: geometric init's zero biases make concurrent hyperplanes
        for prm in net.parameters():
            prm.add_(0.01 * torch.randn_like(prm))
    return net


REFUSED = [
    ({"tiles": 10000}, "tiles=10000: 1e\\+12 tiles"),
    ({"tiles": 10**6}, "tiles=1000000"),
    ({"mode": "track", "seeds": 4096}, "seeds=4096: the 4097\\^3 seed grid"),
    ({"band": 4096}, "band=4096 would bound"),
    ({"band": 3}, "band must be 0 \\(off\\) or a power of two"),
    ({"memory_limit": math.nan}, "memory_limit must be a finite positive number"),
    ({"memory_limit": math.inf}, "memory_limit must be a finite positive number"),
    ({"memory_limit": 0}, "memory_limit must be a finite positive number"),
    ({"memory_limit": -1.0}, "memory_limit must be a finite positive number"),
    ({"memory_limit": True}, "memory_limit must be a number of bytes"),
    ({"memory_limit": "8GB"}, "memory_limit must be a number of bytes"),
    ({"level": math.nan}, "level must be a finite number"),
    ({"level": -math.inf}, "level must be a finite number"),
    ({"workers": 0}, "workers must be between 1"),
    ({"workers": "two"}, "workers must be an integer"),
    ({"tiles": 0}, "tiles must be >= 1"),
    ({"tiles": 2.5}, "tiles must be an integer"),
    ({"mode": "fast"}, "mode must be 'surface', 'complex', 'track' or 'auto'"),
    ({"close": "yes"}, "close must be True or False"),
    ({"device": "gpu"}, "device=gpu is not a device name"),
    ({"mode": "track", "seeds": 0}, "seeds must be >= 1"),
]


@pytest.mark.parametrize("kwargs, message", REFUSED, ids=[str(k) for k, _ in REFUSED])
def test_refused_before_allocating(net, kwargs, message):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ArgumentError, match=message):
        extract_mesh(net, 0.5, progress=False, **kwargs)
    assert time.perf_counter() - t0 < 5.0  # refused, not attempted
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100 * 1024  # KiB: nothing big allocated


def test_refused_by_the_complex_too(net):
    from nsr.extraction.complex import extract_complex

    for bad in (math.nan, -5, 0):
        with pytest.raises(ArgumentError, match="memory_limit"):
            extract_complex(net, 0.5, progress=False, memory_limit=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU exists")
def test_cuda_without_a_gpu_is_a_clear_error(net):
    with pytest.raises(ArgumentError, match="no CUDA device is available here"):
        extract_mesh(net, 0.5, progress=False, device="cuda")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_default_limit_honours_ulimit_v():
    """Under ``ulimit -v`` the default budget is 80% of the address space still free, so the
    extraction stops with the guard's MemoryError, not the allocator's raw RuntimeError."""
    proc = _run("""
        import resource, torch
        torch.set_num_threads(1)
        from nsr.limits import default_memory_limit
        from nsr.networks import ReLUMLP
        from nsr.extraction.complex import extract_complex
        vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')) * 1024
        room = 300 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (vm + room, resource.getrlimit(resource.RLIMIT_AS)[1]))
        limit = default_memory_limit()
        print('LIMIT', limit, room)
        torch.manual_seed(0)
        try:
            extract_complex(ReLUMLP(3, 64, 4), 1.0, progress=False)
            print('DONE')
        except MemoryError as err:
            print('GUARD', str(err).splitlines()[0])
    """)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    limit, room = (float(x) for x in out.split("LIMIT ")[1].split()[:2])
    assert 0 < limit <= 0.8 * room + 1  # not 80% of the machine's free memory
    assert "GUARD edge subdivision (complex mode) stopped" in out, out


def test_default_limit_without_rlimit_is_the_available_memory():
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        pytest.skip("this process runs under ulimit -v")
    avail = next((int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemAvailable")), None)
    if avail is None:
        pytest.skip("no /proc/meminfo")
    assert default_memory_limit() <= 0.8 * avail * 1.1


def test_memory_message_fits_the_mode(net):
    """Surface mode must not be told to use mode='surface'; complex mode is told to."""
    with pytest.raises(MemoryError) as surface:
        extract_mesh(net, 0.5, mode="surface", progress=False, memory_limit=2e4)
    assert "surface mode" in str(surface.value) and "mode='surface'" not in str(surface.value)
    assert "mode='track'" in str(surface.value)
    with pytest.raises(MemoryError) as cplx:
        extract_mesh(net, 0.5, mode="complex", progress=False, memory_limit=2e4)
    assert "complex mode" in str(cplx.value) and "mode='surface'" in str(cplx.value)


def test_progress_in_a_log_is_lines_not_redraws(net, capsys):
    """stderr is not a terminal under pytest's capture: a line per tenth of the work, no carriage returns."""
    extract_mesh(net, 0.5, mode="complex", progress=True)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("complex: ")]
    assert "\r" not in err and 1 <= len(lines) <= 11
    assert lines[-1].startswith("complex: 48/48 neurons")  # 3 layers of 16


@pytest.mark.slow
def test_surface_mode_peak_stays_under_the_limit(shared_dir):
    """Surface mode used to overshoot its limit (peak RSS 2.8x a 30 MB limit on the 8x32 bunny):
    the guard now counts what surface mode holds (3x its arrays, measured)."""
    path = shared_dir / "models" / "bunny_3d_8x32.pt"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    proc = _run(f"""
        import resource, warnings, torch
        torch.set_num_threads(1)
        from nsr.networks import ReLUMLP, as_network
        from nsr.extraction.surface import extract_mesh
        warnings.simplefilter('ignore')
        extract_mesh(ReLUMLP(3, 8, 2, geometric_init=True, radius=0.3), 0.5, progress=False)  # warm-up
        net = as_network({str(path)!r})
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        limit = 100 * 2**20
        try:
            extract_mesh(net, 0.5, progress=False, memory_limit=limit)
            print('DONE')
        except MemoryError:
            print('PEAK', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / limit)
    """)
    assert "PEAK" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert float(proc.stdout.split("PEAK")[1]) <= 1.0
