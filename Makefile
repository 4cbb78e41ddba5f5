# negkit — two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install negkit with its dependencies on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.negkit-installed
RUNS   ?= runs
FIGS   ?= figures
NB     := $(PY) -m papermill --kernel python3 --log-level WARNING

# The kit's default models are tiny: one intra-op thread per process is faster than two
# fighting over the same 2 cores (measured: a 3-epoch fit took 57 s with 2 threads on a
# busy machine, 6.7 s with 1). Override with `make demo OMP_NUM_THREADS=2`.
export OMP_NUM_THREADS ?= 1

# Notebooks `make demo` executes, in order, on the built-in digits default.
DEMO_NOTEBOOKS := 01_quickstart 02_sensitivity 03_sign_agreement 04_forget_vectors 05_results

.PHONY: install demo test test-browser bench clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,browser,ray]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(RUNS)/notebooks $(FIGS)
	@start=$$(date +%s); \
	for nb in $(DEMO_NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(NB) notebooks/$$nb.ipynb $(RUNS)/notebooks/$$nb.ipynb \
	    -p smoke False -p run_dir $(RUNS)/digits -p figures_dir $(FIGS) || exit 1; \
	done; \
	echo "make demo: notebooks ran in $$(( $$(date +%s) - start )) s; figures in $(FIGS)/, executed notebooks in $(RUNS)/notebooks/"

test: $(STAMP)
	@$(PY) -m pytest -m "not browser"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests — that is a failure" >&2; exit 1; fi; \
	exit $$rc

test-browser: $(STAMP)
	$(PY) -m pytest -m browser tests/browser

bench: $(STAMP)
	$(PY) benchmarks/bench_merge.py --quick
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_coef_search.py --quick

clean-runs:
	rm -rf $(RUNS)
