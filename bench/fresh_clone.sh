#!/usr/bin/env bash
# `make all` on a fresh clone: what a new user waits for, install included.
#
#   bash bench/fresh_clone.sh [DIR] [REF]     # DIR default: a new temporary folder beside this
#                                             # checkout (so ../shared is found); REF default: HEAD
#
# Clones this repository's REF into DIR, then runs `make all EXTRA=--no-progress` there, the
# virtual environment built from scratch (pip's own download cache is used, as on any machine
# that has installed once). Prints each command's summary line (embed: documents, windows,
# tokens, seconds, peak memory; train-head and evaluate theirs), then the wall time of each
# step (install, embed, train-head, evaluate) and of the whole, and the peak resident memory of
# the largest process (/usr/bin/time).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir=${1:-$(mktemp -d "$(dirname "$here")/fresh-clone.XXXX")}
ref=${2:-HEAD}
rm -rf "$dir"
git clone -q "$here" "$dir"
git -C "$dir" checkout -q "$(git -C "$here" rev-parse "$ref")"
cd "$dir"
step() {  # step NAME TARGET: time one make target, print its seconds
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f "$1 peak resident memory: %M KiB" make --no-print-directory "$2" EXTRA=--no-progress
    end=$(date +%s.%N)
    python3 -c "print('$1 wall time: %.1f s' % ($end - $start))" | tee -a "$dir/steps.txt"
}
start=$(date +%s.%N)
step install install
step embed embed
step train-head train-head
step evaluate evaluate
end=$(date +%s.%N)
echo "make all on a fresh clone of $(git rev-parse --short HEAD): $(python3 -c "print(round($end - $start, 1))") s" \
     "($(date -u +'%Y-%m-%d %H:%M UTC'), $(nproc) cores, clone in $dir)"
