# Set-up and checks. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MB := $(VENV)/bin/medbackdoor
DEMO_OUT ?= demo

.PHONY: demo quick-pair real-pair test test-all lint bench docs clean

# the core install (what `make demo` needs: no optional extra), then the test and docs tools on top of it
$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(VENV)/.installed: $(VENV)/.core
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,docs]'
	touch $@

demo: $(VENV)/.core
	$(MB) poison preview --config quick-real --out $(DEMO_OUT)/poison
	$(MB) reproduce --protocol quick --seeds 0 --jobs 2 --out $(DEMO_OUT)/reproduce
	$(MB) summary $(DEMO_OUT)/reproduce/runs/fraction-0.0_seed-0 $(DEMO_OUT)/reproduce/runs/size-3_seed-0
	$(MB) run --config quick-real --set train.epochs=1 --set trigger.fraction=0 --out $(DEMO_OUT)/real-clean --resume --quiet
	$(MB) run --config quick-real --set train.epochs=1 --out $(DEMO_OUT)/real-3px --resume --quiet
	$(MB) summary $(DEMO_OUT)/real-clean $(DEMO_OUT)/real-3px
	@echo "Report (seed 0 of the quick study): $(DEMO_OUT)/reproduce/report/report.md"
	@echo "Real NIH radiographs (nih-sample, bundled), 1 epoch: $(DEMO_OUT)/real-clean, $(DEMO_OUT)/real-3px; the 6-epoch pair: make real-pair"
	@echo "Figure 1 (128-px pair trained for it): $(DEMO_OUT)/reproduce/figure1/trigger/explain/figure1.png"
	@echo "All three seeds (adds 12 runs, the 6 done are kept): $(MB) reproduce --protocol quick --out $(DEMO_OUT)/reproduce"

# The quick protocol's clean control and 3x3 run at full length (6 epochs, 2,000 images), side by side.
quick-pair: $(VENV)/.core
	$(MB) run --config quick --set trigger.fraction=0 --out $(DEMO_OUT)/quick-clean --resume
	$(MB) run --config quick --out $(DEMO_OUT)/quick-3px --resume
	$(MB) summary $(DEMO_OUT)/quick-clean $(DEMO_OUT)/quick-3px

# The quick-real protocol's clean control and 3x3 run on the bundled real NIH radiographs, at full length (6 epochs).
real-pair: $(VENV)/.core
	$(MB) run --config quick-real --set trigger.fraction=0 --out $(DEMO_OUT)/real6-clean --resume
	$(MB) run --config quick-real --out $(DEMO_OUT)/real6-3px --resume
	$(MB) summary $(DEMO_OUT)/real6-clean $(DEMO_OUT)/real6-3px

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m ''

# the documentation site (MkDocs, Material, mkdocstrings) into site/; `make test` builds it in strict mode too
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

lint: $(VENV)/.installed
	$(PY) -m ruff check medbackdoor tests benchmarks tools

bench: $(VENV)/.installed
	$(PY) benchmarks/loader.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache site
