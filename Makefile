# Two commands on a fresh machine: `make run` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/danube-delta.yaml
# torch is pinned so that a fresh venv gets the build this project is tested with; on a Jetson
# set TORCH_SPEC= (empty) and VENV_FLAGS=--system-site-packages to use JetPack's torch and OpenCV.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
VENV_FLAGS ?=
# Optional backends beside the default OpenVINO: EXTRAS=test,onnxruntime (or tensorrt on a CUDA PC).
EXTRAS ?= test
BIN := $(VENV)/bin

.PHONY: run test demo doctor system-packages lint bench soak models clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "birdwatch needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(if $(strip $(TORCH_SPEC)),$(BIN)/python -m pip install -q $(TORCH_SPEC))
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/birdwatch run --config $(CONFIG)

# The whole pipeline on a made-up feeder clip with the configured model (fetched on first use), no camera
# or broker needed; then `make doctor` checks your own setup, one line per check.
demo: $(VENV)/.installed
	$(BIN)/birdwatch demo --config $(CONFIG)

doctor: $(VENV)/.installed
	$(BIN)/birdwatch doctor --config $(CONFIG)

test: system-packages $(VENV)/.installed
	$(BIN)/ruff check birdwatch tests bench
	$(BIN)/mypy birdwatch
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# What the tests start for real (mosquitto, the GStreamer RTSP server, ...): installed when this user
# may (root or password-less sudo on Debian/Ubuntu), else the one command to run is printed.
system-packages:
	@PYTHON=$(PYTHON) bash tests/support/system-packages.sh

lint: $(VENV)/.installed
	$(BIN)/ruff check birdwatch tests bench
	$(BIN)/mypy birdwatch
	$(BIN)/ruff format --check birdwatch tests bench

bench: $(VENV)/.installed
	$(BIN)/birdwatch bench

# Leak check: the pipeline at full speed on looping clips; SOAK_SECONDS=3600 for a long one.
SOAK_SECONDS ?= 480
soak: $(VENV)/.installed
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS)

models: $(VENV)/.installed
	$(BIN)/birdwatch models pull --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
