# paxoslog developer entry points.  Every target creates the virtualenv if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SEEDS ?= 2000
PROTOCOL ?= both
NODES ?= 3,5
START ?= 0

.PHONY: venv run test sim bench bench-core bench-storage bench-http bench-coord bench-compare compare chaos clean
DURATION ?= 600
MODE ?= multipaxos
CONF ?= conf/local-3.toml

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Bytecode for the package, written here because the editable install does not, and a
# shell with PYTHONDONTWRITEBYTECODE set (CI, containers) never writes it on import: then
# every node process compiled the package again (a node's start to its API port: 540 ms
# of CPU, 370 ms with the bytecode), which five nodes restarting at once on two cores
# paid together.  Quick when nothing changed (only changed sources are compiled again).
venv: $(VENV)/.installed
	@$(PY) -m compileall -q paxoslog statemachines

run: venv
	$(VENV)/bin/paxoslog cluster up $(CONF)

test: venv
	$(PY) -m pytest -q

sim: venv
	$(PY) -m paxoslog.sim --seeds $(SEEDS) --start $(START) --protocol $(PROTOCOL) --nodes $(NODES)

bench-core: venv
	$(PY) tools/bench_core.py

compare: venv
	$(PY) tools/compare_modes.py

bench-storage: venv
	$(PY) tools/bench_storage.py

bench-http: venv
	$(PY) tools/bench_http.py

bench-coord: venv
	$(PY) tools/bench_coord.py

# paxoslog (both modes) against a 3-member etcd, wrk as the load generator when installed
# (apt-get install -y etcd-server wrk); report and plot in reports/.  Never part of `make test`.
BENCH_COMPARE_ARGS ?=
bench-compare: venv
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet -e '.[plot]'
	$(PY) tools/bench_compare.py $(BENCH_COMPARE_ARGS)

bench: bench-core bench-http

chaos: venv
	$(PY) tools/chaos.py --duration $(DURATION) --mode $(MODE)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
