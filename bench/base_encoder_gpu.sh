#!/usr/bin/env bash
# A base-size encoder fine-tuned on a GPU, then the fused pipeline on it: both 20 Newsgroups settings.
#
#   bash bench/base_encoder_gpu.sh MODEL RESULTS [LR]          # PYTHON=.venv/bin/python where a venv holds the project
#
# MODEL: a base-size encoder folder or id (measured with all-mpnet-base-v2, the one base-size
# model installable here); RESULTS: a folder for the figures (WORK, default runs/bench-base-gpu,
# holds the models and caches). LR: the encoder layers' peak rate, default 5e-5, the top of
# the BERT paper's fine-tuning grid (2e-5..5e-5) for every layer of a base-size model; the
# project's 1e-4 default was set for MiniLM. Nothing here is chosen on the test set.
#
# Two pipelines at once on the one GPU (16 CPU cores: their tokenizing and heads overlap):
#   * 20class: bench/finetune.py --unfreeze-top all --epochs 3 (patience 1) -> embed train/test;
#   * 3class:  the same with --epochs 4 --patience 2 (MiniLM's 3-class validation peaked at epoch 3);
# then bench/fused.py on each pair of caches: heads of inputs both / windows (/ terms on 20class),
# seeds 0, 1, 2, --jobs at once, beside TF-IDF + LinearSVC. Epoch and step wall times are
# therefore shared between the two pipelines; accuracy is what this measures.
# RESULTS/results.tgz holds every JSON, table and log; it is refreshed every 20 s, so a run cut
# short keeps what it had done.
set -u
model=$1
results=$2
lr=${3:-5e-5}
py=${PYTHON:-python3}
work=${WORK:-runs/bench-base-gpu}
mkdir -p "$results" "$work/results"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true

pipeline() {  # SETTING EPOCHS JOBS INPUTS [finetune options...]
    local setting=$1 epochs=$2 jobs=$3 inputs=$4
    shift 4
    $py bench/finetune.py --setting "$setting" --unfreeze-top all --epochs "$epochs" --no-head \
        --out "$work/results/finetune-$setting.json" --work "$work" -- --model "$model" --lr "$lr" "$@" \
    && $py bench/fused.py --setting "$setting" --train "$work/$setting/kall/train.h5" \
        --test "$work/$setting/kall/test.h5" --poolings lstm --inputs "$inputs" --jobs "$jobs" \
        --runs "$work/heads" --out "$work/results/fused-$setting"
}

pack() {
    for setting in 20class 3class; do
        cp -f "$work/$setting/kall/log.txt" "$work/results/finetune-$setting.log" 2>/dev/null
        cp -f "$work/$setting/kall/model/finetune.json" "$work/results/finetune-$setting-record.json" 2>/dev/null
    done
    tar -czf "$results/results.tgz.tmp" -C "$work" results && mv -f "$results/results.tgz.tmp" "$results/results.tgz"
}

{ nvidia-smi -L; $py -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
  transformers.__version__)"; } > "$work/results/machine.txt" 2>&1
(while sleep 20; do pack; done) &
packer=$!
pipeline 3class 4 6 both,windows --patience 2 > "$work/results/3class.log" 2>&1 &
three_class=$!
pipeline 20class 3 9 both,windows,terms > "$work/results/20class.log" 2>&1
status=$?
wait $three_class
kill $packer
pack
exit $status
