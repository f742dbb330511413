# Two commands on a fresh machine: `make demo` (the whole story on the bundled model) and `make test`.
# Both create .venv on first use. TORCH selects the torch build: the default is the one this project is
# tested with; on a CUDA machine, e.g. `make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.speechtune-installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/speechtune demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
