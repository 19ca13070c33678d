# Two entry points (see README): `make demo` and `make test`.
# Each creates the virtual environment on first use and installs nsr into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Without a GPU, pin the CPU build of PyTorch (a plain `pip install torch` pulls a
# multi-GB CUDA build). Set TORCH_INDEX=https://download.pytorch.org/whl/cpu where
# the CPU wheel is not served locally; a user with a GPU keeps their CUDA torch.
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.nsr-installed

.PHONY: demo test test-all lint install clean gpu-check

demo: $(STAMP)
	$(PY) -m nsr.demo

test: $(STAMP)
	$(PY) -m ruff check nsr tests experiments data
	$(PY) -m pytest -m "not slow and not gpu" -q --doctest-modules nsr tests

test-all: $(STAMP)
	$(PY) -m pytest -q --doctest-modules nsr tests

# On a machine with CUDA: GPU tests and the device benchmarks, tables to $$NSR_OUT (experiments/out/).
gpu-check: $(STAMP)
	PY=$(PY) bash experiments/gpu_check.sh

lint: $(STAMP)
	$(PY) -m ruff check nsr tests experiments data

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@$(MAKE) --no-print-directory libusb
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	    echo "GPU found: installing the default (CUDA) build of torch"; $(PIP) install -q torch; \
	else \
	    echo "no GPU found: installing the CPU build of torch ($(TORCH_CPU_SPEC))"; \
	    $(PIP) install -q $(TORCH_CPU_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple); \
	fi
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

# open3d's Python module links against libusb-1.0 (Debian: libusb-1.0-0).
.PHONY: libusb
libusb:
	@if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libusb-1.0-0 (needed by open3d)"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then \
	    echo "installing libusb-1.0-0 (needed by open3d) with sudo"; \
	    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null; \
	else \
	    echo "WARNING: libusb-1.0 not found and cannot be installed here; open3d will not import."; \
	    echo "         Install it with your package manager (Debian/Ubuntu: apt-get install libusb-1.0-0)."; \
	    echo "         nsr imports open3d lazily: everything else works, open3d features raise a clear error."; \
	fi

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
