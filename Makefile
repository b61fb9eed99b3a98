# Two entry points for a fresh machine (each builds its own virtualenv first):
#   make demo   synthetic catalog -> pretrain -> RoDPO -> evaluation table (about 5 min on 2 CPU cores)
#   make test   the whole test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_SHM_COMM=1 DS_BUILD_FUSED_ADAM=1 $(PY) -m pip install -q --no-cache-dir --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install -q -e '.[text,dev]'
	$(PY) -c "from rodpo_kernels.topk_scoring import native; native.tile_candidates()"  # compile the CPU top-K selection once
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rodpo demo --config configs/demo.yaml

test: setup
	$(VENV)/bin/pytest -q tests
	rm -f /dev/shm/deepspeed_allreduce_buffer_* 2>/dev/null || true

clean:
	rm -rf $(VENV) runs data_cache
