# The two commands a user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMPONENTS := protocols libos enclave-worker coordinator party-client experiments detente

.PHONY: demo test lint typecheck protos clean postgresql

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# Put each component folder on sys.path, so `python -m`, mypy and tools
	# started from the repo root all see the same packages: without it the
	# folders protocols/, libos/, … in the working directory would shadow the
	# editable packages as empty namespace packages. It also makes the
	# benchmarks (experiments/, not part of the installed package) importable.
	printf '%s\n' $(addprefix $(CURDIR)/,$(COMPONENTS)) > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/detente-components.pth"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/detente demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy -p protocols -p libos -p enclave_worker -p coordinator -p party_client -p experiments -p detente

# The coordinator's tests also run against a real PostgreSQL: a throwaway server
# they start themselves (tests/coordinator/coordinator_postgres.py). Install
# Debian's package if no PostgreSQL is here; if that fails, those tests fail.
postgresql:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| (apt-get update && apt-get install -y postgresql) \
		|| echo "could not install PostgreSQL (apt-get install -y postgresql): its tests will fail" >&2

test: lint postgresql
	$(VENV)/bin/pytest -q

protos: $(STAMP)
	$(PY) -m protocols.wire.regenerate

clean:
	rm -rf $(VENV) build *.egg-info
