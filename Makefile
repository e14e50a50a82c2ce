# flowrelay: every target installs what it needs first, so a fresh clone needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install up test bench lock lint asyncapi clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(PYTHON) -m uv venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip sync --quiet --python $(BIN)/python --require-hashes --compile-bytecode requirements.lock
	$(PYTHON) -m uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Run the whole stack locally: embedded NATS, API, executor(s), suggester (offline model if no key).
up: install
	$(BIN)/flowrelay up $(ARGS)

## The test suite: real nats-server, real worker processes, scripted model.
test: install
	$(BIN)/python -m pytest $(ARGS)

## Benchmark against the in-process floor and the original design (QUICK=1 for a short run).
bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick,) $(ARGS)

## Regenerate the lockfile after changing dependencies in pyproject.toml.
lock:
	$(PYTHON) -m uv pip compile pyproject.toml --group dev --generate-hashes \
		--python-version 3.11 --no-header -o requirements.lock

## Regenerate the AsyncAPI documents of the services (CI checks they are current).
asyncapi: install
	mkdir -p docs/asyncapi
	$(BIN)/faststream docs gen --factory flowrelay_executor.app:asyncapi_app --yaml --out docs/asyncapi/executor.yaml
	$(BIN)/faststream docs gen --factory flowrelay_suggester.service:asyncapi_app --yaml --out docs/asyncapi/suggester.yaml

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
