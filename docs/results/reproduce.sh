#!/usr/bin/env bash
# Reproduce docs/results/: train the five architectures, evaluate them with the baselines.
# Usage: docs/results/reproduce.sh [SHARED_DATA_DIR] [MODELS_DIR]
# Defaults: ../shared/data beside the repository, models in a temporary directory.
# Runtime on 2 cores: a few minutes (training.json in each folder has the timings).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${1:-$here/../../../shared/data}"
models="${2:-$(mktemp -d)}"
lab2="$data/lab2/conn.log"
uids="$data/lab2/attack_uids.tsv"
s008="$data/stratosphere/008-zeek-mixed/conn.log.labeled.gz"
s010="$data/stratosphere/010-zeek-mixed/conn.log.labeled.gz"
archs=(rnn lstm gru cnn-lstm ensemble)
files() { for a in "${archs[@]}"; do echo "$models/$1/$a.onnx"; done; }

# 1. lab2, time split at 9 minutes: train on the benign windows before it (attack targets
#    left out too), test on everything after it. Δ = 10 s, T = 16 (160 s of context).
seqwatch train "$lab2" --labels "$uids" --interval 10 --window 16 --until +540 \
  --exclude-attacked --arch all --epochs 60 --batch-size 32 --hidden-size 32 --patience 10 \
  --seed 0 --out-dir "$models/lab2" --no-progress
# shellcheck disable=SC2046
seqwatch evaluate $(files lab2) "$lab2" --labels "$uids" --since +540 \
  --baseline zscore --baseline zscore-l2 --baseline iforest \
  --baseline-train "$lab2" --baseline-until +540 --exclude-attacked \
  --title "lab2: train before +9 min, test after (Δ=10 s, T=16)" \
  --out "$here/lab2" --no-progress > /dev/null
cp "$models/lab2/training.json" "$models/lab2/training_loss.png" "$here/lab2/"

# 2. Stratosphere CTU-Normal: train on the benign windows of capture 008 (one day of a
#    Windows PC on the CTU network), test on capture 010 (the next day, another PC).
#    Δ = 60 s, T = 16.
seqwatch train "$s008" --interval 60 --window 16 --arch all --epochs 30 --batch-size 64 \
  --hidden-size 32 --patience 5 --seed 0 --out-dir "$models/ctu" --no-progress
# shellcheck disable=SC2046
seqwatch evaluate $(files ctu) "$s010" \
  --baseline zscore --baseline zscore-l2 --baseline iforest --baseline-train "$s008" \
  --title "Stratosphere: train on 008, test on 010 (Δ=60 s, T=16)" \
  --out "$here/ctu" --no-progress > /dev/null
cp "$models/ctu/training.json" "$models/ctu/training_loss.png" "$here/ctu/"

# 3. The same two comparisons retrained with seeds 1 and 2 (tables only): how much of the
#    difference between architectures is the luck of initialization.
for seed in 1 2; do
  seqwatch train "$lab2" --labels "$uids" --interval 10 --window 16 --until +540 \
    --exclude-attacked --arch all --epochs 60 --batch-size 32 --hidden-size 32 --patience 10 \
    --seed "$seed" --out-dir "$models/lab2-seed$seed" --no-progress
  # shellcheck disable=SC2046
  seqwatch evaluate $(files "lab2-seed$seed") "$lab2" --labels "$uids" --since +540 \
    --title "lab2, seed $seed" --out "$here/seeds/lab2-seed$seed" --no-plots --no-progress \
    > /dev/null
  seqwatch train "$s008" --interval 60 --window 16 --arch all --epochs 30 --batch-size 64 \
    --hidden-size 32 --patience 5 --seed "$seed" --out-dir "$models/ctu-seed$seed" --no-progress
  # shellcheck disable=SC2046
  seqwatch evaluate $(files "ctu-seed$seed") "$s010" \
    --title "Stratosphere 008 -> 010, seed $seed" --out "$here/seeds/ctu-seed$seed" \
    --no-plots --no-progress > /dev/null
done
