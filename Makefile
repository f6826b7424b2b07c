# Two commands on a fresh machine:
#   make demo   set up .venv, build the demo archive, run the workflow locally
#   make test   set up .venv (+ test extras, Octave, OpenSSH, the Nova test cloud) and run the tests
#
# Python 3.11 is expected as `python3` (override with PYTHON=...).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
DEMO_SESSIONS ?= 6

.PHONY: demo test setup setup-test system-packages profile clean-demo lint lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Every dependency comes from the lock (exact versions, sha256 hashes; src/qmroct/envlock.py
# says which lock is which), then qmroct and the executor plugin themselves without
# dependencies. Snakemake finds executor plugins only in non-editable or compat-editable
# installs, so both packages are installed in compat mode (path .pth files).
DEV_LOCK := src/qmroct/locks/dev.txt
RUNTIME_LOCK := src/qmroct/locks/runtime.txt
setup: $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps -e . --config-settings editable_mode=compat
	$(BIN)/pip install --quiet --no-deps -e ./snakemake-executor-plugin-openstack --config-settings editable_mode=compat
	$(BIN)/pip check
	@$(MAKE) --no-print-directory profile

# Rewrite the locks after a change to pyproject.toml (the plugin's too): versions already
# locked stay unless the change needs others (uv keeps the output file's pins); the dev lock
# is constrained to the runtime lock, so both say the same version of every shared package.
# `make lock UPGRADE=--upgrade` moves everything to the newest allowed versions.
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(UPGRADE)
lock: $(BIN)/python
	@test -x $(BIN)/uv || { echo "uv missing in $(VENV): make setup first" >&2; exit 1; }
	$(UV_COMPILE) pyproject.toml -o $(RUNTIME_LOCK)
	$(UV_COMPILE) pyproject.toml snakemake-executor-plugin-openstack/pyproject.toml \
	  --extra test -c $(RUNTIME_LOCK) -o $(DEV_LOCK)

# `snakemake --profile openstack` looks in ~/.config/snakemake/, not in profiles/:
# link ours there unless the user already has a profile of that name (never clobbered).
PROFILE_HOME ?= $(HOME)/.config/snakemake
profile:
	@mkdir -p $(PROFILE_HOME)
	@link=$(PROFILE_HOME)/openstack; \
	if [ -L $$link ] && [ ! -e $$link ]; then rm $$link; fi; \
	if [ ! -e $$link ]; then ln -s $(CURDIR)/profiles/openstack $$link && echo "linked $$link -> profiles/openstack"; \
	elif [ "$$(readlink -f $$link)" != "$(CURDIR)/profiles/openstack" ]; then \
	  echo "note: $$link exists and is not this checkout's; kept. Use --workflow-profile openstack."; fi

demo: setup
	@test -d demo/archive || $(BIN)/qmroct demo-archive --out demo --sessions $(DEMO_SESSIONS) --seed 0
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --keep-going
	@echo "Report: results/report/index.html   Tables: results/tables/"

system-packages:
	@if ! command -v octave-cli >/dev/null || ! command -v gcc >/dev/null || ! test -x /usr/sbin/sshd \
	    || ! command -v cloud-init >/dev/null || ! command -v systemd-analyze >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    octave gcc libc6-dev openssh-server openssh-client cloud-init systemd >/dev/null; fi

# The Nova test cloud gets its own venv (.venv-nova): Nova pins eventlet, oslo and SQLAlchemy.
setup-test: setup system-packages
	bash tests/cloud/setup.sh

test: setup-test
	PATH=$(CURDIR)/$(BIN):$$PATH QMROCT_REQUIRE_OCTAVE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-demo:
	rm -rf demo results logs scratch .qmroct .snakemake
