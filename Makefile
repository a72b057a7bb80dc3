# The two commands of the README, and the pieces they are made of.
#   make demo   set up .venv and run `retro demo`: database, GPT vs RETRO, eval, generation
#   make test   set up .venv and run every test: mypy, Python (pytest), C++ (GoogleTest via ctest)
#               and the wheel built isolated, installed into a fresh venv (scripts/check_wheel.sh)
PYTHON ?= .venv/bin/python
JOBS ?= 2
CPP_BUILD := build/cpp

.PHONY: demo test test-types test-python test-cpp test-wheel fuzz setup-bench setup-test gtest bench bench-quick bench-db bench-ops clean

demo:
	bash scripts/setup_env.sh data,bench
	$(PYTHON) -m retro demo --out runs/demo

# The IVF-PQ benchmark on 100k synthetic vectors against faiss (~3 minutes).
bench-quick: setup-bench
	$(PYTHON) bench/ivfpq.py --quick

test: setup-test test-types test-python test-cpp test-wheel

setup-bench:
	bash scripts/setup_env.sh bench

setup-test:
	bash scripts/setup_env.sh test

# Type checks of python/retro (settings in pyproject.toml).
test-types:
	$(PYTHON) -m mypy

test-python:
	$(PYTHON) -m pytest tests

# python -m build --wheel (isolated, CPU only) -> a fresh venv -> import and one search (~1 min on
# 2 cores: the core compiled once more, in build/wheel-check/, kept for the next run).
test-wheel:
	PYTHON=$(PYTHON) bash scripts/check_wheel.sh

# The fuzz test at length: 20000 mutated index files of each kind and 10000 databases (~15 min;
# `make test` runs 300 and 150).
fuzz: setup-test
	RETRO_FUZZ_CASES=20000 $(PYTHON) -m pytest tests/test_fuzz.py -q

# The C++ core on its own: unit tests, and the benchmark binary in verify-only mode.
test-cpp: gtest
	cmake -S . -B $(CPP_BUILD) -DRETRO_BUILD_TESTS=ON -DRETRO_BUILD_BENCH=ON \
	  -DRETRO_ENABLE_CUDA=OFF -DCMAKE_BUILD_TYPE=Release --log-level=WARNING
	cmake --build $(CPP_BUILD) -j $(JOBS)
	OMP_WAIT_POLICY=passive ctest --test-dir $(CPP_BUILD) --output-on-failure -j $(JOBS)

# GoogleTest comes from Debian's libgtest-dev.
gtest:
	@test -f /usr/include/gtest/gtest.h || { \
	  echo "[setup] installing libgtest-dev"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libgtest-dev; }

# The full CPU benchmark (1M synthetic + real sentence embeddings; 8-bit PQ, then 4-bit fast-scan
# with re-ranking): ~1.5 h on 2 cores.
bench:
	bash scripts/setup_env.sh bench,data
	$(PYTHON) bench/ivfpq.py

# Every stage of `retro db build` on the default corpus (~3 minutes).
bench-db:
	bash scripts/setup_env.sh bench,data
	$(PYTHON) bench/db_build.py --threads 1

# The attention ops against PyTorch (~10 minutes).
bench-ops:
	bash scripts/setup_env.sh bench
	$(PYTHON) bench/ops.py

clean:
	rm -rf build
