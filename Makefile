# negkit — two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install negkit with its dependencies on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.negkit-installed
RUNS   ?= runs
# make demo writes its figures next to its run, so a demo leaves the git tree clean; the
# committed figures/ are refreshed deliberately with `make demo FIGS=figures`.
FIGS   ?= $(RUNS)/digits/figures
# The kit's notebook runner: parameters checked against each notebook's parameters cell
# (unknown names refused), values read as YAML, no kernel start-up noise.
NB     := $(PY) -m negkit notebook --quiet

# The kit's default models are tiny: one intra-op thread per process is faster than two
# fighting over the same 2 cores (measured: a 3-epoch fit took 57 s with 2 threads on a
# busy machine, 6.7 s with 1). Override with `make demo OMP_NUM_THREADS=2`.
export OMP_NUM_THREADS ?= 1

# Notebooks `make demo` executes, in order, on the built-in digits default.
DEMO_NOTEBOOKS := 01_quickstart 02_sensitivity 03_sign_agreement 04_forget_vectors 05_results

.PHONY: install demo lab test test-browser bench bench-fashion fashion-data clean-runs

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
	  $(NB) notebooks/$$nb.ipynb -o $(RUNS)/notebooks/$$nb.ipynb \
	    -p smoke false -p dataset digits -p run_dir $(RUNS)/digits -p figures_dir $(FIGS) || exit 1; \
	done; \
	echo "make demo: notebooks ran in $$(( $$(date +%s) - start )) s; figures in $(FIGS)/, executed notebooks in $(RUNS)/notebooks/"

# JupyterLab with the demo's environment (OMP_NUM_THREADS above; the notebooks also set the
# kit's thread policy). Notebooks resolve run_dir against the repository root, so they open
# make demo's runs. Pass options through LAB_ARGS, e.g. `make lab LAB_ARGS="--port 9999"`.
lab: $(STAMP)
	@mkdir -p runs/lab && cp -n notebooks/*.ipynb runs/lab/
	@echo "JupyterLab on working copies of the notebooks in runs/lab/ (the tracked ones in notebooks/ stay clean;"
	@echo "delete a copy to get the tracked version back). Open the http://127.0.0.1:8888/lab/tree/runs/lab/07_explorer.ipynb"
	@echo "URL it prints below (with its token) for the explorer."
	$(VENV)/bin/jupyter lab --notebook-dir=. $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS) \
	  runs/lab/07_explorer.ipynb

# Fashion-MNIST (Debian's dataset-fashion-mnist) in the memorising regime: the benchmark over 5 seeds in
# 2 worker processes (resumable: rerun after an interruption), notebooks 02-05 on it, then the committed
# tables and figures in $(FIGS_FASHION)/fashion_mnist_* (with the pool-size sweep). See docs/results.md for
# the measured wall time; `make bench-fashion FASHION_ARGS="--quick"` runs the 14×14 contrast configuration,
# `make bench-fashion FASHION_ARGS="--full --device cuda"` the GPU-sized one.
FASHION_DIR   ?= /usr/share/datasets/fashion-mnist
FIGS_FASHION  ?= figures
FASHION_ARGS  ?=
FASHION_NOTEBOOKS := 02_sensitivity 03_sign_agreement 04_forget_vectors 05_results

fashion-data:
	@if [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
	         "or download it with torchvision and pass --data-root to benchmarks/fashion_mnist.py" >&2; exit 1; \
	  fi; \
	fi

bench-fashion: $(STAMP) fashion-data
	@mkdir -p $(RUNS)/notebooks $(FIGS_FASHION)
	@start=$$(date +%s); \
	$(PY) benchmarks/fashion_mnist.py run --run-dir $(RUNS)/fashion_mnist $(FASHION_ARGS) || exit 1; \
	for nb in $(FASHION_NOTEBOOKS); do \
	  case $$nb in \
	    03_sign_agreement) extra="-p scenario class_0";; \
	    04_forget_vectors) extra="-p classes [3,8] -p betas [5] -p select_epochs [5] -p epochs 5";; \
	    *) extra="";; \
	  esac; \
	  echo "== $$nb (fashion_mnist) $$extra"; \
	  $(NB) notebooks/$$nb.ipynb -o $(RUNS)/notebooks/fashion_mnist_$$nb.ipynb -p smoke false -p dataset fashion_mnist \
	    -p run_dir $(RUNS)/fashion_mnist -p figures_dir $(RUNS)/fashion_mnist/figures $$extra || exit 1; \
	done; \
	cp $(RUNS)/fashion_mnist/figures/fashion_mnist_*.png $(RUNS)/fashion_mnist/figures/fashion_mnist_*.pdf $(FIGS_FASHION)/ 2>/dev/null; \
	$(PY) benchmarks/fashion_mnist.py report --run-dir $(RUNS)/fashion_mnist --figures-dir $(FIGS_FASHION) --k-subsets 2 --k-rules match $(FASHION_ARGS) || exit 1; \
	echo "make bench-fashion: $$(( ($$(date +%s) - start) / 60 )) min; tables and figures in $(FIGS_FASHION)/fashion_mnist_*"

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
