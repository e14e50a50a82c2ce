# flowrelay: every target installs what it needs first, so a fresh clone needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed
ARGS   ?=

# The executors' own environment: flowrelay plus the any-agent frameworks named in
# FRAMEWORKS (any of $(ALL_FRAMEWORKS), or all), from its own hashed lock
# (locks/executor/uv.lock), so a framework never changes what the API and suggester run on.
# `make up` and the tests start executors from it when it exists.
FRAMEWORKS      ?=
ALL_FRAMEWORKS  := openai langchain llama_index smolagents agno google
TEST_FRAMEWORKS ?= all
EXEC_VENV       := .venv-executor
EXEC_PROJECT    := locks/executor
chosen = $(sort $(if $(filter all,$(1)),$(ALL_FRAMEWORKS),$(1)))
unknown = $(filter-out $(ALL_FRAMEWORKS),$(call chosen,$(1)))
empty :=
space := $(empty) $(empty)
exec_stamp = $(EXEC_VENV)/.installed-$(subst $(space),+,$(call chosen,$(1)))

# Debian's chromium: the console's browser tests drive it (Playwright's own download cannot
# work on a closed network). Installed with apt-get when missing, as CI starts on a fresh machine.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install up test test-deploy bench lock lint asyncapi clean browser

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(PYTHON) -m uv venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip sync --quiet --python $(BIN)/python --require-hashes --compile-bytecode requirements.lock
	$(PYTHON) -m uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP) $(if $(strip $(FRAMEWORKS)),$(call exec_stamp,$(FRAMEWORKS)))

# One stamp per set of frameworks: asking for another set syncs the environment to it.
$(EXEC_VENV)/.installed-%: $(EXEC_PROJECT)/uv.lock $(EXEC_PROJECT)/pyproject.toml pyproject.toml | $(STAMP)
	$(if $(call unknown,$(subst +, ,$*)),$(error unknown framework(s) $(call unknown,$(subst +, ,$*)); choose from: $(ALL_FRAMEWORKS) or all))
	UV_PROJECT_ENVIRONMENT=$(abspath $(EXEC_VENV)) $(PYTHON) -m uv sync --quiet --frozen \
		--project $(EXEC_PROJECT) --python $(PYTHON) --compile-bytecode \
		$(foreach framework,$(subst +, ,$*),--extra $(framework))
	rm -f $(EXEC_VENV)/.installed-*
	touch $@

## Run the whole stack locally: embedded NATS, API, executor(s), suggester (offline model if no key).
up: install
	$(BIN)/flowrelay up $(ARGS)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

browser: $(CHROMIUM)

## The test suite: real nats-server, real worker processes, scripted model, a real browser; the
## framework matrix needs every framework in the executor environment (TEST_FRAMEWORKS=all).
## Two pytest processes (pytest-xdist), a test module on one of them: most tests wait on
## processes (models, deadlines, brokers) more than they compute. TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2
test: install $(CHROMIUM) $(call exec_stamp,$(TEST_FRAMEWORKS))
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

## Containers and clustering: installs Docker's engine and compose from Debian if missing, starts
## dockerd if none runs (and stops it after), builds the images with no registry (cached between
## runs; the executor image with DEPLOY_FRAMEWORKS besides tinyagent), then runs compose.yaml and
## deploy/compose.cluster.yaml from the host and the 3-node NATS cluster test (tests/deploy/).
## Where containers cannot run the compose tests skip with the reason (FLOWRELAY_REQUIRE_DOCKER=1,
## as .ci/run sets it, makes that a failure).
DEPLOY_FRAMEWORKS ?= openai
test-deploy: install
	@start=$$(date +%s); FLOWRELAY_FRAMEWORKS="$(DEPLOY_FRAMEWORKS)" deploy/with-docker.sh deploy/test-deploy.sh $(ARGS); \
	status=$$?; echo "make test-deploy: $$(( $$(date +%s) - start )) s, exit $$status"; exit $$status

## Benchmark against the in-process floor, the original design and the Celery peer (QUICK=1 for
## a short run). The peer needs redis-server: installed with apt-get when missing; where that
## cannot be done the benchmark says so and skips the peer.
REDIS_SERVER ?= /usr/bin/redis-server

$(REDIS_SERVER):
	-$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server \
		|| echo "redis-server could not be installed: the benchmark skips the Celery peer"
	-$(SUDO) systemctl disable --now redis-server >/dev/null 2>&1 || true

bench: install $(REDIS_SERVER)
	$(BIN)/python -m bench $(if $(QUICK),--quick,) $(ARGS)

## Regenerate the lockfile after changing dependencies in pyproject.toml.
lock:
	$(PYTHON) -m uv pip compile pyproject.toml --group dev --generate-hashes \
		--python-version 3.11 --no-header -o requirements.lock
	$(PYTHON) -m uv pip compile pyproject.toml --generate-hashes -c requirements.lock \
		--python-version 3.11 --no-header --quiet -o locks/service/requirements.lock  # the service image: no dev group
	$(PYTHON) -m uv lock --project $(EXEC_PROJECT) --python 3.11
	echo "uv==$(UV_VERSION)" | $(PYTHON) -m uv pip compile - --generate-hashes --no-header \
		--python-version 3.11 --quiet -o locks/build/requirements.lock  # uv inside the executor image

## Regenerate the AsyncAPI documents of the services (CI checks they are current).
asyncapi: install
	mkdir -p docs/asyncapi
	$(BIN)/faststream docs gen --factory flowrelay_executor.app:asyncapi_app --yaml --out docs/asyncapi/executor.yaml
	$(BIN)/faststream docs gen --factory flowrelay_suggester.service:asyncapi_app --yaml --out docs/asyncapi/suggester.yaml
	$(BIN)/faststream docs gen --factory flowrelay_api.asyncapi:asyncapi_app --yaml --out docs/asyncapi/api.yaml

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(EXEC_VENV) .pytest_cache
