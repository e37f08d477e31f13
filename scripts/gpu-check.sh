#!/usr/bin/env bash
# The GPU check in one call, every step time-boxed so the whole ends inside 9 minutes:
#   1. set-up: what a bare CUDA machine lacks (the project's requirements; PyPI's torch there is the
#      CUDA build), from --wheels DIR when the machine has no network;
#   2. the tests that use CUDA (tests/test_cuda.py);
#   3. python bench.py --device cuda --dtype bf16, then with --compile;
#   4. a LoRA step's utilisation against batch size (1, 2, 4, 8, 16 x 512) until it stops rising;
#   5. the plan (reproduce.py) on full-size random weights, at a budget that takes about 2 minutes of
#      compute at the speed step 4 measured (and 40 validation systems per evaluation);
#   6. OUT/summary.md: every figure in one table.
# At most 8 files come back in OUT: env.txt (set-up, versions, each step's time), tests.log, bench.log,
# compile.log, batches.log, plan.log, summary.md.
#
#   bash scripts/gpu-check.sh --out "$OUT" [--wheels .whl]     # on a GPU machine
#   bash scripts/gpu-check.sh --device cpu --out /tmp/check     # the rehearsal: the same steps, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda OUT=gpu-check WHEELS=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    *) echo "error: unknown option $1 (expected --device cuda|cpu, --out DIR, --wheels DIR)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "error: --device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
ENV="$OUT/env.txt"
: > "$ENV"

# step NAME LIMIT_S LOG COMMAND...: run COMMAND, killed after LIMIT_S seconds, its output in OUT/LOG
step() {
  local name=$1 limit=$2 log=$3 start rc
  shift 3
  start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/$log" 2>&1
  rc=$?
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "STEP $name $rc $((ms / 1000)).$((ms % 1000 / 100)) limit $limit" >> "$ENV"
  return $rc
}

if [ "$DEVICE" = cuda ]; then  # the real sizes
  BENCH=(--device cuda --dtype bf16) BATCHES=(--device cuda --dtype bf16 --size full)
  COMPILE=(--device cuda --dtype bf16 --compile --only forward train) SIZE=full
  PLAN=(--device cuda --eval-limit 40)  # 40 validation systems per evaluation: decoding is latency, not FLOPs
  T_SETUP=30 T_TESTS=45 T_BENCH=120 T_COMPILE=100 T_BATCHES=45 T_PLAN=170 SECONDS_PLAN=90
else                           # the rehearsal: every step, at sizes a CPU runs in seconds
  BENCH=(--device cpu --size tiny --layers 1 --quick --seq-len 32 --eval-prompts 2 --eval-steps 1)
  BATCHES=(--device cpu --dtype fp32 --size tiny --seq-len 32 --batches 1 2 4 --runs 1)
  COMPILE=("${BENCH[@]}" --compile --only forward) SIZE=tiny
  PLAN=(--device cpu --lrs 1e-2 --ranks 2 --chunks 128 --chunk 128 --eval-limit 2 --val-limit 2 --ctx 10 \
        --horizon 2 --eval-every 5 --plot-systems 0)
  T_SETUP=60 T_TESTS=120 T_BENCH=120 T_COMPILE=120 T_BATCHES=60 T_PLAN=120 SECONDS_PLAN=
fi

# 1. set-up: import what the project needs; install only what is missing
{ echo "# $(date -u +%FT%TZ) device=$DEVICE"; uname -a; nvidia-smi -L 2>/dev/null; } >> "$ENV"
missing=$($PY - <<'PY'
import importlib.util
need = {"torch": "torch", "safetensors": "safetensors", "tokenizers": "tokenizers", "huggingface_hub": "huggingface-hub",
        "numpy": "numpy", "h5py": "h5py", "scipy": "scipy", "matplotlib": "matplotlib", "tqdm": "tqdm",
        "scoringrules": "scoringrules", "pytest": "pytest", "transformers": "transformers", "peft": "peft"}
print(" ".join(pkg for module, pkg in need.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -n "$WHEELS" ]; then
    step setup "$T_SETUP" env.txt $PY -m pip install -q --no-index --no-deps --target "$WORK/site" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
  else
    step setup "$T_SETUP" env.txt $PY -m pip install -q $missing
  fi
fi
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'peft', peft.__version__)" >> "$ENV" 2>&1

# 2. the tests that use CUDA (on the CPU they skip, with their reason)
step tests "$T_TESTS" tests.log $PY -m pytest -q -rs tests/test_cuda.py -p no:cacheprovider

# 3. the bench, plain and compiled
step bench "$T_BENCH" bench.log $PY bench.py "${BENCH[@]}" --json "$WORK/bench.json"
step compile "$T_COMPILE" compile.log $PY bench.py "${COMPILE[@]}" --json "$WORK/compile.json"

# 4. a LoRA step against batch size
step batches "$T_BATCHES" batches.log $PY gpu_check.py batches "${BATCHES[@]}" --json "$WORK/batches.json"

# 5. the plan on random weights of the full size (tiny in the rehearsal), in a budget that fits its box
$PY gpu_check.py model-dir "$WORK/model" --size "$SIZE" >> "$OUT/plan.log" 2>&1
if [ -n "$SECONDS_PLAN" ] && [ -f "$WORK/batches.json" ]; then
  BUDGET=$($PY gpu_check.py plan-budget "$WORK/batches.json" --seconds "$SECONDS_PLAN")
else
  BUDGET=2e10
fi
echo "plan budget $BUDGET" >> "$ENV"
echo "plan model $SIZE" >> "$ENV"
step plan "$T_PLAN" plan.log $PY reproduce.py --model "$WORK/model" --budget "$BUDGET" --out "$WORK/plan" --quiet \
  "${PLAN[@]}"

# 6. the table
$PY gpu_check.py summary "$OUT" --work "$WORK" > /dev/null 2>> "$ENV"
echo "summary: $OUT/summary.md" >&2
awk '$1 == "STEP" && $3 != 0 { failed = 1 } END { exit failed }' "$ENV"  # non-zero if any step failed
