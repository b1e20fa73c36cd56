# The two commands a newcomer needs:
#   make serve   set everything up, start the server (gRPC :50051, HTTP :8000)
#   make test    set everything up, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
GRPC_PORT ?= 50051
HTTP_PORT ?= 8000

.PHONY: setup serve test bench lint typecheck proto clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[server,dev]'
	touch $@

serve: setup
	$(VENV)/bin/jaxinit-server --host $(HOST) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py --json bench/results.json

lint: setup
	$(VENV)/bin/ruff check client server tests scripts bench

typecheck: setup
	$(VENV)/bin/mypy client/jaxinit server/jaxinit_server

proto: setup
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info
