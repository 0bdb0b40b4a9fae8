# Two commands on a fresh machine:
#   make demo   runs the main job (no cluster needed)
#   make test   runs the whole test suite (builds the test control plane and h2spec first, with Go >= 1.26)
# and, before `kubectl apply -k manifests/overlays/...`:
#   make cluster-check   renders every Kustomize layout and validates it offline
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONTROLPLANE := tests/e2e/controlplane
H2SPEC := tests/epp/h2spec
COMPILED := build/compiled
PACKAGES := policies webhook certs epp kube reconciler cli telemetry
PACKAGE_FILES := $(shell find $(PACKAGES) -name '*.py' -o -name '*.yaml')

.PHONY: demo test lint venv compiled controlplane h2spec cluster-check bench clean

# setuptools >= 77 and wheel in the venv let the tests build and install the package offline
# (pip --no-build-isolation --no-index), as the CI recipe in docs/cli.md installs it.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77' wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/extproc-guard demo

# $(call go_build,WHAT,GO.MOD FILES,BUILD SCRIPT): the build script, when a Go as new as the go.mod files
# ask for is on PATH. Without one the build is skipped with a note (the tests that need it skip with one
# line each), unless EXTPROC_GUARD_REQUIRE_E2E=1, as CI sets it: then the script runs and fails with its
# own message.
define go_build
	@need=$$(awk '$$1 == "go" { print $$2 }' $(2) | sort -V | tail -n 1); \
	have=$$(go env GOVERSION 2>/dev/null | sed 's/^go//'); \
	if [ "$${EXTPROC_GUARD_REQUIRE_E2E:-}" != 1 ] && \
	   { [ -z "$$have" ] || [ "$$(printf '%s\n%s\n' "$$need" "$$have" | sort -V | head -n 1)" != "$$need" ]; }; then \
		echo "make: Go >= $$need not found (have: $${have:-none}): not building $(1)"; \
	else \
		$(3); \
	fi
endef

controlplane:
	$(call go_build,the e2e control plane,$(CONTROLPLANE)/go.mod $(CONTROLPLANE)/etcd/go.mod,$(CONTROLPLANE)/build.sh)

h2spec:
	$(call go_build,h2spec,$(H2SPEC)/go.mod,$(H2SPEC)/build.sh)

# The compiled build (docs/compiled.md): the project installed into $(COMPILED), not the venv, with the
# engine's modules compiled by mypyc (the venv keeps the sources for the demo and the tests). The tests run
# the engine's tests against it; `bench/scale_bench.py --engines source,compiled` measures both.
$(COMPILED)/.built: $(STAMP) setup.py pyproject.toml $(PACKAGE_FILES)
	rm -rf $(COMPILED) build/wheel build/mypyc build/lib.* build/temp.* build/bdist.*
	EXTPROC_GUARD_COMPILE=1 $(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir build/wheel .
	$(BIN)/pip install --quiet --no-deps --no-index --target $(COMPILED) build/wheel/extproc_guard-*.whl
	touch $@

# Without a C compiler or the Python headers the build is skipped with a note (its tests then skip with
# one line each), unless EXTPROC_GUARD_REQUIRE_E2E=1, as CI sets it: then it runs and fails with its own
# message.
compiled: $(STAMP)
	@missing=$$($(BIN)/python -c 'import os, shutil, sysconfig; \
		cc = (sysconfig.get_config_var("CC") or "cc").split()[0]; \
		header = os.path.join(sysconfig.get_paths()["include"], "Python.h"); \
		print("a C compiler (" + cc + ")" if shutil.which(cc) is None else \
		      "the Python headers (Python.h)" if not os.path.exists(header) else "")'); \
	if [ -n "$$missing" ] && [ "$${EXTPROC_GUARD_REQUIRE_E2E:-}" != 1 ]; then \
		echo "make: $$missing not found: not building the compiled engine"; \
	else \
		$(MAKE) --no-print-directory $(COMPILED)/.built; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) controlplane h2spec compiled lint
	$(BIN)/pytest

cluster-check: $(STAMP)
	$(BIN)/python manifests/cluster_check.py

bench: $(STAMP)
	$(BIN)/python bench/check_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
