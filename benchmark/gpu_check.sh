#!/usr/bin/env bash
# sslbench's GPU check: one command, about 5-7 minutes on a fresh one-GPU machine (H100), nothing to
# install and no network: torch, torchvision, timm, tqdm, numpy, pillow and pytest are enough (mlflow,
# submitit and pycocotools are never imported: the check runs with --tracking-uri none semantics).
#
#     bash benchmark/gpu_check.sh            # from the repository root; results in $OUT (or ./gpu-check-out)
#     bash benchmark/gpu_check.sh --small    # a CPU smoke run of the same plumbing (small data, few steps)
#
# Sections, each under its own timeout so one failure never hides the rest:
#   1. machine and versions;
#   2. the CUDA tests (every test that skips without CUDA: exact resume with train.deterministic,
#      no synchronisation inside a step, bf16 views, evaluation on the device);
#   3. bench_train: SimCLR / MoCo v2 / BYOL images/s per switch and the per-image DataLoader
#      baseline, checkpoint cost, and a 3-epoch end-to-end SimCLR + kNN with its 200-epoch projection;
#   4. bench_train --compile for SimCLR (compile time reported apart);
#   5. bench_eval: kNN on 50k x 10k features and bf16 feature extraction of 60k images.
# Writes summary.md (everything a note needs), bench_train.json, bench_compile.json, bench_eval.json,
# pytest.txt and log.txt into $OUT.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$REPO"
OUT="${OUT:-$REPO/gpu-check-out}"; mkdir -p "$OUT"; export OUT
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec > >(tee "$OUT/log.txt") 2>&1
SMALL=""; [ "${1:-}" = "--small" ] && SMALL="--small"   # --small: a CPU smoke run of the plumbing

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | head -3
echo "cpus: $(nproc)  python: $(python3 --version 2>&1)"

# The repository root is the package `sslbench` (pyproject: package-dir sslbench = "."): importable
# under that name through a symlink, without pip.
if ! python3 -c "import sslbench" 2>/dev/null || [ "$(python3 -c 'import sslbench, os; print(os.path.dirname(sslbench.__file__))' 2>/dev/null)" != "$REPO" ]; then
    PKGROOT="$(mktemp -d)"; ln -s "$REPO" "$PKGROOT/sslbench"
    export PYTHONPATH="$PKGROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 - <<'PY' || { echo "FATAL: sslbench does not import"; exit 3; }
import sys, torch, torchvision, timm, sslbench
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| torchvision", torchvision.__version__, "| timm", timm.__version__, "| python", sys.version.split()[0])
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("sslbench", sslbench.__version__, "from", sslbench.__file__)
PY

echo "== CUDA tests"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider -k "cuda or deterministic or bf16" \
    tests/test_execution.py tests/test_augment_merge.py tests/test_knn.py tests/test_datasets.py \
    tests/test_fp32_logits.py tests/test_bench_eval.py tests/test_engine.py 2>&1 | tee "$OUT/pytest.txt" | tail -25

echo "== bench_train (engine per switch, DataLoader baseline, end-to-end projection)"
timeout 240 python3 -m sslbench.benchmark.bench_train --methods simclr,mocov2,byol --e2e-epochs 3 $SMALL \
    --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.txt" | tail -40

echo "== bench_train --compile (SimCLR)"
timeout 200 python3 -m sslbench.benchmark.bench_train --methods simclr --compile $SMALL \
    --variants fast,compile=default,compile=reduce-overhead --json "$OUT/bench_compile.json" 2>&1 \
    | tee "$OUT/bench_compile.txt" | tail -12

echo "== bench_eval"
timeout 90 python3 -m sslbench.benchmark.bench_eval $SMALL --json "$OUT/bench_eval.json" 2>&1 | tee "$OUT/bench_eval.txt" | tail -12

{
    echo "# sslbench GPU check ($(date -u +%F\ %T) UTC, commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo; echo '```'; head -4 "$OUT/log.txt"; echo '```'
    echo; echo "## CUDA tests"; echo '```'; tail -8 "$OUT/pytest.txt" 2>/dev/null; echo '```'
    echo; echo "## bench_train"; sed -n '/^| method/,$p' "$OUT/bench_train.txt" 2>/dev/null
    echo; echo "## compile"; sed -n '/^| method/,$p' "$OUT/bench_compile.txt" 2>/dev/null
    echo; echo "## evaluation"; echo '```'; tail -12 "$OUT/bench_eval.txt" 2>/dev/null; echo '```'
} > "$OUT/summary.md"
echo "== summary written to $OUT/summary.md"
