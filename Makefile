# Each target works on a fresh machine with only Python >= 3.10: it creates .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# torch is only the parity-test reference: always the CPU build. A wheel in
# /opt/wheels (as on our CI machines) is used as is; elsewhere PyTorch's CPU index.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo study test bench clean

# XLA's CPU backend mallocs each step's temporaries afresh (180 MiB for a demo
# student step), glibc maps and unmaps them, and the kernel faults them back in
# 4 KiB at a time: ~45k page faults a step. With transparent huge pages for
# malloc'd memory it faults 2 MiB at a time: 90x fewer faults, half the system
# time, the same numbers, and steps only 1.03-1.09x faster (the zeroing of fresh
# pages remains; benchmarks/cpu_malloc_huge_pages.py, BENCHMARKS.md). A no-op off
# glibc >= 2.35 or where THP is "never"; set GLIBC_TUNABLES yourself to override.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

$(VENV)/.core: setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e .
	@touch $@

$(VENV)/.test: $(VENV)/.core
	@if ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then \
	  version=$$(ls /opt/wheels/torch-*+cpu-*.whl | head -1 | sed -E 's/.*torch-([0-9.]+)\+cpu.*/\1/'); \
	  echo "installing torch $$version (CPU) from /opt/wheels"; \
	  $(PIP) --find-links /opt/wheels "torch==$$version"; \
	else \
	  $(PIP) torch --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PIP) -e ".[test]"
	@touch $@

demo: $(VENV)/.core
	$(VENV)/bin/distill-pipeline --config=configs/demo_cpu.py

# Every arm of the demo under three seeds: ~1 h from a fresh clone on 2 Intel Xeon cores (60.0 min measured)
# (~20 min a seed, the students side by side in one-core workers; README "Now: answer-only rows of 144").
study: $(VENV)/.core
	$(VENV)/bin/distill-pipeline --config=configs/demo_study.py

test: $(VENV)/.test
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile tests

bench: $(VENV)/.test
	$(PY) benchmarks/forward_vs_transformers.py
	$(PY) benchmarks/decode_vs_transformers.py
	$(PY) benchmarks/train_step_vs_transformers.py
	$(PY) benchmarks/math_verifier_throughput.py
	$(PY) benchmarks/code_judge_throughput.py
	$(PY) benchmarks/cpu_malloc_huge_pages.py
	$(PY) benchmarks/demo_workers_throughput.py
	$(PY) benchmarks/demo_step_variants.py
	$(PY) benchmarks/chat_template_compile_cache.py
	$(PY) benchmarks/sft_read_threads.py
	@# Needs a finished `make demo` (its teacher and data).
	@if [ -f artifacts/demo_pipeline/results.json ]; then $(PY) benchmarks/demo_idle_cores.py; \
	else echo "benchmarks/demo_idle_cores.py: skipped, run make demo first"; fi

clean:
	rm -rf $(VENV) artifacts
