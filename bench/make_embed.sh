#!/usr/bin/env bash
# Wall time and throughput of `make embed` on all of 20 Newsgroups (train + test) from
# scratch, with the default settings, into a fresh cache folder.
#
#   bash bench/make_embed.sh [CACHE_DIR]        # default: a new temporary folder
#
# Prints each split's summary line (documents, windows, tokens, seconds, tokens/s,
# peak memory) and the total wall time of the make target.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-$(mktemp -d)}
start=$(date +%s.%N)
make --no-print-directory embed CACHE_DIR="$dir" EXTRA=--no-progress
end=$(date +%s.%N)
echo "make embed wall time: $(python3 -c "print(round($end - $start, 1))") s  ($(date -u +%Y-%m-%d), $(nproc) cores, caches in $dir)"
