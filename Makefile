# The README's two commands: `make demo` (the main job) and `make test`.
# Each creates or reuses .venv and installs the pinned requirements.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-quick docs notebooks venv prepare-venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

# Preparing datasets (`launch.py prepare imagenet2012 …`) adds TensorFlow,
# which TFDS's builders need; training does not.
$(VENV)/.prepare: requirements.txt requirements-prepare.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-prepare.txt
	touch $@

# The docs site's generator (MkDocs); the tests build the site too.
$(VENV)/.docs: requirements-docs.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-docs.txt
	touch $@

$(VENV)/.test: requirements.txt requirements-prepare.txt requirements-test.txt $(VENV)/.prepare $(VENV)/.docs
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.test

prepare-venv: $(VENV)/.prepare

# The Table 3 ablation at demo scale on the embedded dataset: five rows × two
# seeds in runs/table3_demo/NAME/seed_K/, two at a time, skipped when finished,
# resumed when interrupted; ends with the comparison table (and
# runs/table3_demo/report.html).
DEMO_DIR ?= runs/table3_demo

demo: $(VENV)/.runtime
	$(BIN)/python launch.py sweep sweeps/table3_ablation.py:scale=demo --workdir $(DEMO_DIR) --parallel 2
	$(BIN)/python launch.py compare $(DEMO_DIR) --format html

# Two workers; tests that share a module's expensive runs are grouped
# (xdist_group) so that each such run is made once, by one worker.
# The SLURM tests use a running cluster: start (as root: install and start) the
# local one first; without it they fail, naming the command. The HTML report's
# test loads it in headless Chromium: installed first (as root) when missing.
# The notebooks run as tests too (nbmake: each in a fresh kernel, failing on any
# error), with QUICK=1: the same cells at a smaller scale, outputs not saved.
test: $(VENV)/.test
	bash scripts/slurm_local.sh start --install || echo "warning: the local SLURM cluster did not start; the SLURM tests will say why" >&2
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || echo "warning: Chromium did not install (apt-get install chromium); the report's browser test will say why" >&2
	QUICK=1 $(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15 tests --nbmake notebooks

# The edit-test loop's tier: the tests not marked `slow` (tests/conftest.py
# lists the files left out: subprocess trainings, SLURM, several processes, a
# browser, a wheel, TensorFlow/Keras/torch references), in-process, no root.
test-quick: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=10 -m 'not slow' tests

# The docs site in site/ (docs/ and the API reference from the docstrings).
# Strict: a broken link, a missing page or a docstring that does not render
# fails the build.
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Re-execute every notebook in place at full scale, refreshing the committed
# outputs (02 and 03 train: about 25 minutes on 2 CPU cores in all).
notebooks: $(VENV)/.test
	for notebook in notebooks/*.ipynb; do \
	  $(BIN)/jupyter-execute --inplace --timeout=-1 $$notebook || exit 1; \
	done

clean:
	rm -rf $(VENV)
