# The two commands a newcomer needs:
#   make serve   set up .venv with the client and the server, start the server (gRPC :50051, HTTP :8000)
#   make test    set up .venv with what the tests need, run the default test tiers (2 cores beside a
#                CPU hog: 5 minutes with the per-user compilation cache warm, 9 on a machine's first run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
GRPC_PORT ?= 50051
HTTP_PORT ?= 8000

.PHONY: setup setup-serve setup-lint setup-release system-tools serve test test-release bench bench-startup bench-export bench-robustness bench-memory load lint typecheck proto clean

# Every install: both distributions editable from this checkout (the client, the root, named
# on each line so that pip never looks the name jaxinit up on the index), pinned by the
# versions CI tests. tests/integration/test_setup_resolution.py resolves each line below
# against the public index alone (`make -n` prints them).
INSTALL := $(PY) -m pip install --quiet -c constraints.txt
SETUP_DEPS := $(VENV)/.venv pyproject.toml server/pyproject.toml constraints.txt

# The venv: Python >= 3.11 (the server's JAX needs it), one line saying so otherwise.
$(VENV)/.venv:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "jaxinit's server needs Python >= 3.11 (JAX 0.10); '$(PYTHON)' is $$(command -v $(PYTHON) >/dev/null && $(PYTHON) -V 2>&1 || echo 'not found'): make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $@

# make serve: the client and the server, nothing else.
setup-serve: $(VENV)/.serve
$(VENV)/.serve: $(SETUP_DEPS)
	$(INSTALL) -e . -e ./server
	touch $@

# make test (and the benchmarks): + what the default test tiers need. Each line below
# installs all that the ones above it do, so it marks them done too.
setup: $(VENV)/.test
$(VENV)/.test: $(SETUP_DEPS)
	$(INSTALL) -e '.[all]' -e './server[test]'
	touch $(VENV)/.serve $@

# make lint, make typecheck: + ruff and mypy (mypy reads the libraries the tests install).
setup-lint: $(VENV)/.lint
$(VENV)/.lint: $(SETUP_DEPS)
	$(INSTALL) -e '.[all]' -e './server[test,lint]'
	touch $(VENV)/.serve $(VENV)/.test $@

# The release tier's heavy interop: + PyTorch (the PyTorch-layout tests), see server/pyproject.toml.
setup-release: $(VENV)/.release
$(VENV)/.release: $(SETUP_DEPS)
	$(INSTALL) -e '.[all]' -e './server[test,release]'
	touch $(VENV)/.serve $(VENV)/.test $@

serve: setup-serve
	$(VENV)/bin/jaxinit-server --host $(HOST) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

# The default tiers (unit, core, adapters, integration; docs/testing.md). The session
# fails if its tests start more than MAX_SERVER_PROCESSES server processes (empty: no
# limit), so the loop stays fast.
# The tests run in TEST_PROCESSES pytest-xdist processes, each test file whole in one of
# them (so that a file's server starts once); TEST_PROCESSES=0 runs them in this one.
MAX_SERVER_PROCESSES ?= 10
TEST_PROCESSES ?= 3
test: setup system-tools
	JAXINIT_MAX_SERVER_PROCESSES=$(MAX_SERVER_PROCESSES) $(PY) -m pytest -m "not release" \
	  -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# The release tier: wheels, venvs, npm/buf/Node, deployment topologies and drills, the
# benchmark, memory bounds, multi-GiB tensors, mass abandonment, full fuzzing.
test-release: setup-release system-tools
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

# Time to ready alone, cold and warm (make bench includes it): about 5 minutes on 2 cores.
bench-startup: setup
	$(PY) bench/startup.py --json bench/startup.json

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

lint: setup-lint
	$(VENV)/bin/ruff check client server tests scripts bench deploy
	$(VENV)/bin/ruff format --check client server tests scripts bench deploy

typecheck: setup-lint
	$(VENV)/bin/mypy client/jaxinit server/jaxinit_server

proto: setup
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info
