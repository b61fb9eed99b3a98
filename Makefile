# Two entry points for a fresh machine (each builds its own virtualenv first):
#   make demo   synthetic catalog -> pretrain -> RoDPO -> evaluation table (about 5 min on 2 CPU cores)
#   make test   the whole test suite, the wheel check and the CI mutation subset (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test wheel-check mutations clean

$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_SHM_COMM=1 DS_BUILD_FUSED_ADAM=1 $(PY) -m pip install -q --no-cache-dir --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install -q -e '.[text,dev]'
	$(PY) -m pip install -q --no-deps recbole==1.2.1  # the lean '.[peers]' install: the peers benchmark's tests run, not skip
	$(PY) -m pip install -q pandas==2.3.3 colorlog==4.7.2 colorama==0.4.4 texttable==1.7.0
	$(PY) -c "from rodpo_kernels.topk_scoring import native; native.tile_candidates()"  # compile the CPU top-K selection once
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rodpo demo --config configs/demo.yaml

test: setup
	$(VENV)/bin/pytest -q tests
	rm -f /dev/shm/deepspeed_allreduce_buffer_* 2>/dev/null || true
	$(MAKE) --no-print-directory wheel-check
	$(PY) tools/mutations.py --ci

# The built wheel, installed without -e into a fresh virtualenv: rodpo --help, import rodpo_kernels, and a tiny
# prepare -> pretrain -> recommend from it (.ci/wheel_check.sh; about 10 s).
wheel-check: setup
	VENV=$(VENV) bash .ci/wheel_check.sh

# Deliberate bugs, one at a time, each caught by at least one test (tools/mutations.py, docs/testing.md);
# `make test` runs the fixed subset `--ci` (the core claims whose tests take seconds).
mutations: setup
	$(PY) tools/mutations.py

clean:
	rm -rf $(VENV) runs data_cache
