# bids-flux: `make demo` runs the whole path on this machine, `make test` runs the tests.
# Both install what they need first (Debian packages, pinned PyPI packages into .venv,
# pinned npm tools into node_modules).

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps test test-unit demo lint

install: system-deps $(STAMP) $(NPM_STAMP)

system-deps:
	@scripts/install-system.sh

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

# gitlab-ci-local (exact version in package-lock.json) runs the CI templates in the tests.
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -m "not integration and not e2e" $(PYTEST_ARGS)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/bidsflux demo $(DEMO_ARGS)

