# BlindRead — the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench-ingest bench-infer bench-deid bench-e2e bench-multisite bench-2pc bench-vendor-scale clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,2pc,multisite,console,scale]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m node.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check durable_io node scp secure_infer tests benchmarks
	$(VENV)/bin/mypy

bench-ingest: $(STAMP)
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/ingest_bound.py

bench-infer: $(STAMP)
	$(PY) benchmarks/infer.py

bench-deid: $(STAMP)
	$(PY) benchmarks/deid.py

bench-e2e: $(STAMP)
	$(PY) benchmarks/e2e.py

# issue 13: 7 sites, 1,149 images, beside the central validation
bench-multisite: $(STAMP)
	$(PY) benchmarks/multisite.py

# two-party (Cheetah) engine: ours over TLS vs plain SPU; MODEL=loader:source for another model
bench-2pc: $(STAMP)
	$(PY) benchmarks/twopc.py $(if $(MODEL),--model $(MODEL),)

# vendor scale-out on a local Ray cluster (needs the scale extra: ray)
bench-vendor-scale: $(STAMP)
	$(PY) benchmarks/vendor_scale.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
