# `make up` runs batchgate, `make test` tests it. Both first make sure uv and
# the locked environment (.venv from uv.lock) are in place, so a fresh clone
# needs only Python 3.11, pip and make. The environment is compiled to
# bytecode once (12 s): with PYTHONDONTWRITEBYTECODE set, as on these
# machines, every process would otherwise compile Prefect again at start
# (4.8 s against 2.1 s for `import prefect` here), and tests start hundreds.

PYTHON ?= python3
# uv on PATH if there is one, else the copy pip installs as a module.
UV := $(shell command -v uv >/dev/null 2>&1 && echo uv || echo $(PYTHON) -m uv)
RUN := $(UV) run --no-sync

.PHONY: env up test quick lint format bench soak scale

env:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet uv || \
		$(PYTHON) -m pip install --quiet --user uv || \
		$(PYTHON) -m pip install --quiet --user --break-system-packages uv
	@$(UV) sync --frozen --quiet --compile-bytecode
	@$(RUN) python -m compileall -q batchgate gateway tasks flows storage

up: env
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(RUN) python -m batchgate.cli up

# Two test processes, a module each at a time: the suite mostly waits on
# servers, so both cores of these machines pay (measured: 3:58 against 6:08
# in one process, all tests passing either way).
PYTEST := $(RUN) pytest -q -p no:cacheprovider -n 2 --dist loadfile

test: env lint
	$(PYTEST)

# The fast tier for the edit loop: no Prefect server, no `up`, no gateway process.
quick: env
	$(RUN) ruff check .
	$(PYTEST) -m "not e2e and not soak"

lint: env
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) lint-imports

format: env
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: env
	@if [ -f bench/__main__.py ]; then $(RUN) python -m bench; \
	else echo "bench/__main__.py does not exist yet"; exit 1; fi

# The long reliability runs (full crash matrix, upstream-fault storms); their
# results are written into docs/reliability.md.
soak: env
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(RUN) pytest -q -p no:cacheprovider -m soak

# Three test hosts on this machine (network namespaces, root only): batches
# spread over them, one large batch, a host SIGKILLed and one cut off
# (bench/scale.py; docs/scale-out.md). ARGS passes flags, e.g.
# `make scale ARGS="--only kill --mode pool"`.
scale: env
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(RUN) python -m bench.scale $(ARGS)
