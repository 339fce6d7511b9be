#!/usr/bin/env bash
# Does an encoder precision keep accuracy? Issue 26's check, one command: for each precision
# given, embed 20 Newsgroups (all 20 classes, full posts: what `make embed` caches) and the
# prototype's 3-class setting (alt.atheism, comp.graphics, talk.religion.misc, headers, footers
# and quotes removed) with `cli.py embed`'s defaults but --precision, then train and score the
# default head (lstm pooling, windows + terms) with seeds 0, 1, 2 on each by bench/fused.py.
# Then, seed by seed, each head of the first precision scored on the test caches of the others
# and the other way round (`cli.py evaluate`): whether a head may be given vectors of another
# precision (longdoc.settings.model.PRECISION_FAMILIES).
#
#   bash bench/precision_accuracy.sh OUT_DIR PRECISION [PRECISION ...]
#   bash bench/precision_accuracy.sh /work/cache/precision bf16 bf16-true
#
# A rerun keeps the caches and the results of three heads it finds. Caches and heads go to
# OUT_DIR/SETTING-PRECISION/; the results to
# docs/bench/fused-SETTING-PRECISION.{json,md} and docs/bench/precision-cross.json. Accuracy does
# not depend on the load; the embed and train-head seconds do: run it alone to read them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/precision_accuracy.sh OUT_DIR PRECISION [PRECISION ...]}
shift
[ $# -ge 1 ] || { echo "give at least one precision" >&2; exit 2; }
export HF_HUB_OFFLINE=1
py=.venv/bin/python
three=(--categories alt.atheism,comp.graphics,talk.religion.misc --remove headers,footers,quotes)

for precision in "$@"; do
  for setting in 20class 3class; do
    dir="$out/$setting-$precision"
    mkdir -p "$dir"
    extra=()
    [ "$setting" = 3class ] && extra=("${three[@]}")
    for split in train test; do
      if [ ! -f "$dir/$split.h5" ]; then
        $py cli.py embed --split "$split" --out "$dir/$split.h5" --precision "$precision" --no-progress \
          ${extra[@]+"${extra[@]}"} --json | tail -1 > "$dir/embed-$split.json"
        echo "embedded $setting $split at $precision: $(cat "$dir/embed-$split.json")"
      fi
    done
    result="docs/bench/fused-$setting-$precision"
    if [ -f "$result.json" ] && [ "$($py -c "import json,sys; print(len(json.load(open(sys.argv[1]))['runs']))" \
        "$result.json")" = 3 ] && [ -f "$dir/heads/$setting/both-lstm-seed2.pt" ]; then
      echo "kept $result.json (3 heads)"  # a rerun after a stop does not train them again
      continue
    fi
    $py bench/fused.py --setting "$setting" --poolings lstm --inputs both --seeds 0,1,2 \
      --train "$dir/train.h5" --test "$dir/test.h5" --runs "$dir/heads" --out "$result"
  done
done

# Heads of one precision on test caches of another.
$py - "$out" "$@" <<'EOF'
import json, subprocess, sys
out, precisions = sys.argv[1], sys.argv[2:]
rows = []
for setting in ("20class", "3class"):
    for trained in precisions:
        for tested in precisions:
            for seed in (0, 1, 2):
                head = f"{out}/{setting}-{trained}/heads/{setting}/both-lstm-seed{seed}.pt"
                child = subprocess.run([sys.executable, "cli.py", "evaluate", "--head", head, "--cache",
                                        f"{out}/{setting}-{tested}/test.h5", "--json"],
                                       capture_output=True, text=True)
                if child.returncode:
                    rows.append({"setting": setting, "trained": trained, "tested": tested, "seed": seed,
                                 "refused": child.stderr.strip().splitlines()[-1]})
                else:
                    metrics = json.loads(child.stdout.strip().splitlines()[-1])["metrics"]
                    rows.append({"setting": setting, "trained": trained, "tested": tested, "seed": seed,
                                 "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
                print(json.dumps(rows[-1]), flush=True)
with open("docs/bench/precision-cross.json", "w") as f:
    json.dump(rows, f, indent=1)
EOF
