# The two commands a newcomer needs:
#   make serve   set everything up, start the server (gRPC :50051, HTTP :8000)
#   make test    set everything up, run the default test tiers (under 10 minutes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
GRPC_PORT ?= 50051
HTTP_PORT ?= 8000

.PHONY: setup system-tools serve test test-release bench bench-export bench-robustness bench-memory load lint typecheck proto clean

setup: $(VENV)/.installed

# Both distributions, editable: the client (the root) and the server (server/), with
# what the tests need.
$(VENV)/.installed: pyproject.toml server/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]' -e './server[dev]'
	touch $@

serve: setup
	$(VENV)/bin/jaxinit-server --host $(HOST) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

# The default tiers (unit, core, adapters, integration; docs/testing.md). The session
# fails if its tests start more than MAX_SERVER_PROCESSES server processes (empty: no
# limit), so the loop stays fast.
MAX_SERVER_PROCESSES ?= 10
test: setup system-tools
	JAXINIT_MAX_SERVER_PROCESSES=$(MAX_SERVER_PROCESSES) $(PY) -m pytest -m "not release" $(PYTEST_ARGS)

# The release tier: wheels, venvs, npm/buf/Node, deployment topologies and drills, the
# benchmark, memory bounds, multi-GiB tensors, mass abandonment, full fuzzing.
test-release: setup system-tools
	$(PY) -m pytest -m release $(PYTEST_ARGS)

# The deployment tests run the real nginx and docker-compose (Debian's packages). As root on
# Debian they are installed here; elsewhere their tests are skipped with a note.
SYSTEM_TOOLS := nginx docker-compose
system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (Debian packages)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "note:$$missing not installed: the deployment tests will be skipped"; fi; fi

bench: setup
	$(PY) bench/run.py --json bench/results.json

# Small-request latency beside heavy requests, and peak RSS per request class (~7.5 min, one server).
bench-export: setup
	$(PY) bench/export_7b.py --json bench/export_7b.json

bench-robustness: setup
	$(PY) bench/robustness.py --json bench/robustness.json

# RSS after 1,000 distinct shapes of each whole-tensor family (30-60 min on two cores);
# the test suite runs the same test with fewer shapes.
bench-memory: setup
	JAXINIT_MEMORY_SHAPES=1000 $(PY) -m pytest -s -q -p no:cacheprovider tests/integration/test_memory_bounds.py \
		> bench/memory.txt 2>&1; status=$$?; cat bench/memory.txt; exit $$status

# 60 s through the compose topology as processes (3 replicas + nginx), every byte verified.
load: setup system-tools
	$(PY) bench/load.py --json bench/load.json

lint: setup
	$(VENV)/bin/ruff check client server tests scripts bench deploy
	$(VENV)/bin/ruff format --check client server tests scripts bench deploy

typecheck: setup
	$(VENV)/bin/mypy client/jaxinit server/jaxinit_server

proto: setup
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info
