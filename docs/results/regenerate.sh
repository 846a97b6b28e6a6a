#!/usr/bin/env bash
# Regenerates the README's "Reading results" examples from real runs on the embedded data:
#   bash docs/results/regenerate.sh [STORE_DIR]        (~60 min on 2 CPU cores; idempotent)
# Runs the quick start (seed 0 and the random-init / raw-pixel baselines), the baseline sweep
# (3 methods x 3 seeds, 22 epochs) and the ablation sweep (batch size, augmentations; 8 epochs)
# into one MLflow store, then writes the leaderboard, the reproduction report and the ablation
# figures into docs/results/. Finished cells are never rerun, so an interrupted run resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
store="$(realpath -m "${1:-sslbench-output/readme-store}")"
uri="sqlite:///$store/mlruns.db"
out=docs/results
mkdir -p "$store"

if [ ! -e "$store/quickstart.done" ]; then
    sslbench quickstart --out "$store/quickstart-$(date +%s)" --tracking-uri "$uri" --no-progress
    touch "$store/quickstart.done"
fi
for sweep in readme-baselines readme-ablation; do
    sslbench sweep run "benchmark/sweeps/$sweep.toml" --out "$store/sweeps/$sweep" --tracking-uri "$uri"
done

sslbench leaderboard --tracking-uri "$uri" --out "$out"
sslbench reproduce --tracking-uri "$uri" --out "$out" --metric top1
sslbench results ablation --tracking-uri "$uri" --out "$out/ablation" --baseline-augment fmnist-quick
# A picture of the leaderboard page for the README, by the same headless Chromium the tests use.
if command -v chromium >/dev/null; then
    chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,700 \
        --screenshot="$PWD/$out/leaderboard.png" "file://$PWD/$out/leaderboard.html" 2>/dev/null
fi
echo "Wrote $out/ (store: $store)"
