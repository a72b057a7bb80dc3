#!/usr/bin/env bash
# Everything the GPU machine checks, in one call within its own time budget:
#   bash bench/gpu_check.sh [BUDGET_SECONDS] [STEPS]
# builds retro with the CUDA kernels, runs the GPU tests, compute-sanitizer on the attention
# kernels and the GPU benchmarks (STEPS: a comma list of build,tests,ops,cppbench,train,sanitize,
# ivfpq, run in that list's order; default all; OPS_REPEATS sets the timed repeats of bench/ops.py, default 20). Writes to $OUT
# (default bench/results/gpu): gpu_check.json (card, commit, command, each step's exit status and
# seconds), gpu_check.log (every step's output), junit.xml, and the benchmarks' ops_cuda.json and
# train_cuda.json; the cppbench step runs the C++ binary bench_attention_cuda (verify, then time)
# for each op and writes bench_attention_cuda_<op>.json; the ivfpq step (the GPU IVF-PQ: its tests, compute-sanitizer on its kernels,
# then bench/ivfpq.py --device cuda in the budget left) writes junit_ivfpq.xml and
# ivfpq_cuda.json. A step starts only if 20 s of budget are left,
# and is cut at its own limit or the budget's end. The machine has no network: the CUTLASS wheel
# travels in .whl/ (see docs/PERFORMANCE.md, "GPU runs: how they are made").
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-480}
all_steps=build,tests,ops,cppbench,train,sanitize,ivfpq
wanted=${2:-$all_steps}
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
log=$out/gpu_check.log
: >"$log"
started=$(date +%s)
records=()

left() { echo $((budget - ($(date +%s) - started))); }

# step NAME LIMIT COMMAND...: runs COMMAND (output to the log) under the smaller of LIMIT and the
# budget left; records its exit status (124: cut by the limit) and seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  if ((remaining < 20)); then
    records+=("{\"step\": \"$name\", \"rc\": null, \"seconds\": 0, \"note\": \"skipped: budget spent\"}")
    return
  fi
  ((limit > remaining)) && limit=$remaining
  echo "=== $name (limit ${limit} s)" | tee -a "$log"
  local t0 rc
  t0=$(date +%s)
  timeout "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $(($(date +%s) - t0)) s" | tee -a "$log"
  records+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - t0))}")
}

build() {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return
  # this card only (sm_90a): the sm_80 code would double the kernels' compile time
  RETRO_ENABLE_CUDA=ON RETRO_BUILD_BENCH=ON RETRO_CUDA_ARCHITECTURES=${RETRO_CUDA_ARCHITECTURES:-90a} \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    python3 -m pip install --no-build-isolation --no-deps --no-index . || return
  python3 -c "import retro; print('retro', retro.__version__, 'cuda build', retro.has_cuda(), 'gpu', retro.cuda_available())"
}

# The C++ attention benchmark, built with the package (build/<wheel tag>/), at issue 6's shape.
cppbench() {
  local binary rc=0
  binary=$(ls build/*/bench_attention_cuda | head -n 1) || return
  for op in cca self cross; do
    "$binary" --op=$op --json="$out/bench_attention_cuda_$op.json" || rc=$?
  done
  return $rc
}

sanitize() {
  local rc=0
  compute-sanitizer --tool memcheck --error-exitcode 3 python3 bench/sanitize_attention.py || rc=$?
  compute-sanitizer --tool racecheck --error-exitcode 3 --kernel-name kns=retro python3 bench/sanitize_attention.py || rc=$?
  return $rc
}

# IVF-PQ on the GPU: tests, sanitizer, then the benchmark with the budget left (at most its limit).
ivfpq() {
  local rc=0 started_at
  started_at=$(date +%s)
  python3 -m pytest tests/test_ivfpq_cuda.py -q -p no:cacheprovider --junitxml="$out/junit_ivfpq.xml" || rc=$?
  compute-sanitizer --tool memcheck --error-exitcode 3 python3 bench/sanitize_ivfpq.py || rc=$?
  compute-sanitizer --tool racecheck --error-exitcode 3 --kernel-name kns=ivfpq python3 bench/sanitize_ivfpq.py || rc=$?
  local bench_budget=$((IVFPQ_LIMIT - ($(date +%s) - started_at) - 60))
  python3 bench/ivfpq.py --device cuda --budget-s "$bench_budget" --out "$out/ivfpq_cuda.json" || rc=$?
  return $rc
}

export -f build cppbench sanitize ivfpq
export out
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

# One step by name. The steps run in the order STEPS names them (build first, then the most wanted),
# so that a tight budget goes to what matters most this time.
run_step() {
  case $1 in
    build) step build 240 build ;;
    tests) step tests 180 python3 -m pytest tests/test_ops_cuda.py tests/test_cuda.py -q \
      -p no:cacheprovider --junitxml="$out/junit.xml" ;;
    ops) step ops 180 python3 bench/ops.py --device cuda --repeats "${OPS_REPEATS:-20}" \
      --out "$out/ops_cuda.json" ;;
    cppbench) step cppbench 60 cppbench ;;
    # bench/train.py stops adding configurations when its own budget would be exceeded
    train) step train 300 python3 bench/train.py --device cuda --preset small \
      --budget-s $(($(left) - 40)) --out "$out/train_cuda.json" ;;
    sanitize) step sanitize 150 sanitize ;;
    # its benchmark starts configurations until 60 s before this step's limit (or the budget's end)
    ivfpq) export IVFPQ_LIMIT=$(($(left) < 600 ? $(left) : 600)); step ivfpq 600 ivfpq ;;
  esac
}

IFS=, read -ra order <<<"$wanted"
for name in "${order[@]}"; do  # a misspelt step must not cost device time
  case $name in build | tests | ops | cppbench | train | sanitize | ivfpq) ;;
    *) echo "unknown step '$name': choose from $all_steps" >&2; exit 2 ;;
  esac
done
nvidia-smi -L >>"$log" 2>&1
for name in "${order[@]}"; do run_step "$name"; done

python3 - "$out" "$budget" "$wanted" "$(IFS=,; echo "${records[*]}")" <<'EOF'
import json, subprocess, sys, os, time
out, budget, wanted, records = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(f"[{sys.argv[4]}]")
try:
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
except OSError:
    card = "no GPU"
summary = {"card": card, "git_commit": os.environ.get("RETRO_GIT_COMMIT", "unknown"),
           "command": f"bash bench/gpu_check.sh {budget} {wanted}", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "steps": records}
open(f"{out}/gpu_check.json", "w").write(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF
