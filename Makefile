# Commands for a fresh machine; each sets up what it needs in .venv first.
#   make demo   - the embedded default run
#   make test   - the test suite (what CI runs); its 15 slowest tests are listed at the end
#   make test-quick - the tests that start no Ray cluster (the inner loop)
#   make test-field-walk - every run-shaping config value trained on its own on 2 workers (~30 min)
#   make docs   - rewrite the generated documents (docs/config.md) from the code
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-quick test-field-walk docs bench-step bench-train bench-shard bench-pipeline bench-predict bench-serve bench-audit bench-metadata bench-scale clean-venv

setup: $(STAMP)

# torch/torchvision come from the registry (CUDA-13 builds, which also run on CPU); facenet-pytorch is
# installed on its own with --no-deps because its metadata pins torch<2.3 and numpy<2.
$(STAMP): pyproject.toml
	@echo "setup: creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "setup: installing soft-dist and its stack (about 7 GB on disk: torch 1.2 GB, CUDA libraries 3.3 GB,"
	@echo "       DALI 0.5 GB, Ray 0.2 GB, the rest); 3-7 minutes, quiet while pip works"
	$(PY) -m pip install --quiet -e '.[test]'
	@echo "setup: installing facenet-pytorch (MTCNN weights, 2 MB) without its outdated pins"
	$(PY) -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)
	@echo "setup: done; 'source $(VENV)/bin/activate' puts soft-dist on your PATH"

demo: $(STAMP)
	$(VENV)/bin/soft-dist demo

# Parallel test processes (pytest-xdist), each with its own local Ray cluster, shards and reference run;
# a module at a time per process (its module fixtures are built once), the slow modules first
# (--dist loadgroup would split a module further, but pytest 9 ignores the group xdist 3.8 writes into node ids).
TEST_PROCESSES ?= 2
PARALLEL := -n $(TEST_PROCESSES) --dist loadscope --no-loadscope-reorder
test: $(STAMP)
	$(PY) -m pytest -q tests $(PARALLEL) --durations=15

# Every test that starts no Ray cluster: training in this process, loaders, shards, export, eval, audit;
# in the same parallel processes as `make test`.
test-quick: $(STAMP)
	$(PY) -m pytest -q tests -m "not ray" $(PARALLEL) --durations=5

# The suite packs the walked values into a few runs; this trains each on its own, so that a packed run's
# failure is traced to its field.
test-field-walk: $(STAMP)
	$(PY) -m pytest -q tests/test_field_walk.py --field-walk --durations=5

# Every generated document (a test fails while one is stale); written through a temporary file so a
# failed run leaves the committed one intact.
docs: $(STAMP)
	$(PY) -m soft_dist config docs > docs/config.md.tmp
	mv docs/config.md.tmp docs/config.md

bench-step: $(STAMP)
	$(VENV)/bin/soft-dist bench step --json runs/bench/step.json

bench-train: $(STAMP)
	$(VENV)/bin/soft-dist bench train --json runs/bench/train.json

bench-shard: $(STAMP)
	$(VENV)/bin/soft-dist bench shard --json runs/bench/shard.json

bench-pipeline: $(STAMP)
	$(VENV)/bin/soft-dist bench pipeline --image-size 224 --batch-size 64 --json runs/bench/pipeline.json

bench-predict: $(STAMP)
	$(VENV)/bin/soft-dist bench predict --json runs/bench/predict.json

bench-serve: $(STAMP)
	$(VENV)/bin/soft-dist bench serve --json runs/bench/serve.json

# 10k, 100k and 1M samples' shard sets, one at a time (about 4 GB on disk at 1M, removed once measured)
bench-metadata: $(STAMP)
	$(VENV)/bin/soft-dist bench metadata --sizes 10000,100000,1000000 --folder runs/bench-metadata --json runs/bench/metadata.json \
		--markdown runs/bench/metadata.md --plot docs/scale_metadata.png

# The generated shard sets (about 2.3 GB at 10k + 100k + 300k), image folders (10k + 100k photos) and the
# tools benchmark's trained runs stay in runs/bench-scale for the next run.
bench-scale: $(STAMP)
	$(VENV)/bin/soft-dist bench scale --sizes 10000,100000,300000 --folder runs/bench-scale --json runs/bench/scale.json \
		--markdown runs/bench/scale.md --plot docs/scale.png
	$(VENV)/bin/soft-dist bench shard-scale --sizes 10000,100000 --folder runs/bench-scale --json runs/bench/shard-scale.json \
		--markdown runs/bench/shard-scale.md
	$(VENV)/bin/soft-dist bench tools-scale --sizes 10000,100000 --folder runs/bench-scale --json runs/bench/tools-scale.json \
		--markdown runs/bench/tools-scale.md

# cleanlab (AGPL) is the baseline's optional extra, installed here only for this benchmark.
bench-audit: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench-audit]'
	$(VENV)/bin/soft-dist bench audit --work-dir runs/bench-audit --json runs/bench/audit.json

clean-venv:
	rm -rf $(VENV)
