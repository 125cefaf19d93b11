#!/usr/bin/env bash
# The one GPU check: the gpu-marked tests and the CUDA benchmarks, in one go, results in one folder.
#
#   bash benchmarks/gpu/check.sh [OUT_DIR]      (OUT_DIR default: $OUT if set, else benchmarks/gpu/results)
#
# On a GPU machine that receives a copy of the working tree, send benchmarks/gpu/wheels along (it is
# git-ignored: carry it as an ignored path) and run `bash benchmarks/gpu/check.sh "$OUT"` with a
# limit of 9-10 minutes.
#
# Without a CUDA device it says so and exits 0. Packages the machine lacks (espnet-s3prl, kaldiio,
# soundfile and their dependencies) are installed without network from the wheels that
# prepare_wheels.sh put in benchmarks/gpu/wheels, into a temporary site directory: nothing else on
# the machine changes. Each step has its own time limit, and the limits add up to under 8 minutes.
#
# OUT_DIR gets at most 8 files (the device tool brings back no more): check.log (environment, every
# step's status and time, the summary) and, per step, STEP.log (plus the benchmark's JSON).
#
# To add a step (the extraction benchmark, the fast-vs-exact extraction test, ...): add one
# `run_step NAME LIMIT_S COMMAND...` line under "Steps" (a pytest file marked gpu is picked up by
# the tests step already), keep the limits' sum under 8 minutes (~7.5 with the install) and the
# files under 8. Exit status: 0 if every step passed (or there is no GPU), 1 otherwise.
#
# Dry run on a CPU (the install from wheels, every step, a tiny benchmark; the gpu tests skip):
#   bash benchmarks/gpu/prepare_wheels.sh --python-version 3.11 --dest /tmp/wheels311   # this machine's Python
#   WHEELS_DIR=/tmp/wheels311 CHECK_DRY_RUN=1 bash benchmarks/gpu/check.sh /tmp/check_dry
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-${OUT:-$here/results}}
python=${PYTHON:-python3}
wheels=${WHEELS_DIR:-$here/wheels}
dry_run=${CHECK_DRY_RUN:-0}
mkdir -p "$out"
log="$out/check.log"
: > "$log"
say() { echo "[check $(date +%H:%M:%S)] $*" | tee -a "$log"; }
failures=0

if [ "$dry_run" != 1 ] && ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$log"; then
  say "no CUDA device visible to $python (torch $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)):"
  say "nothing to check here; the gpu tests and the CUDA benchmarks need a GPU machine"
  exit 0
fi

cd "$repo"
site=$(mktemp -d "${TMPDIR:-/tmp}/wespeaker_lap_site.XXXXXX")
trap 'rm -rf "$site"' EXIT
[ "$dry_run" = 1 ] && say "dry run (CHECK_DRY_RUN=1): CPU allowed, wheels always installed, tiny benchmark"
if [ "$dry_run" = 1 ] || ! "$python" -c "import s3prl, kaldiio, soundfile" 2>/dev/null; then
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    say "espnet-s3prl/kaldiio/soundfile are missing and $wheels holds no wheels:"
    say "run 'bash benchmarks/gpu/prepare_wheels.sh' on a machine with network access, then carry that folder"
    exit 1
  fi
  say "installing $(ls "$wheels"/*.whl | wc -l) wheels into $site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    >>"$log" 2>&1 || { say "FAILED: wheel install (see above)"; exit 1; }
fi
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

{
  echo "== environment"
  "$python" - <<'PY'
import platform, torch, transformers, numpy
import s3prl, kaldiio, soundfile
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| transformers", transformers.__version__, "| numpy", numpy.__version__)
print("from the wheels or the machine:", *(f"{m.__name__} {m.__file__}" for m in (s3prl, kaldiio, soundfile)), sep="\n  ")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
PY
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv 2>&1; fi
} >>"$log" 2>&1

run_step() {  # run_step NAME LIMIT_S COMMAND...: output in OUT_DIR/NAME.log, status and time in check.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS status
  say "step $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  status=$?
  local took=$((SECONDS - start))
  case $status in
    0) say "step $name: passed in ${took}s" ;;
    124|137) say "step $name: TIMED OUT after ${took}s (partial output in $name.log)"; failures=$((failures + 1)) ;;
    *) say "step $name: FAILED (exit $status) in ${took}s; last lines:"; tail -n 25 "$out/$name.log" | tee -a "$log"
       failures=$((failures + 1)) ;;
  esac
}

# Steps ----------------------------------------------------------------------------------------
# 1. Every gpu-marked test (tests/training/test_gpu.py; later ones are picked up too).
run_step gpu_tests 180 "$python" -m pytest -m gpu -v -rA -p no:cacheprovider tests
# 2. Training-step benchmark: (a) frozen step / upstream forward, (b) backend vs previous, (c) phases 1-3 at
#    WavLM Base+ and Large size (crops/s, peak memory, upstream share, host reads).
bench_args=(--reps 5)
[ "$dry_run" = 1 ] && bench_args=(--parts phases --sizes tiny --micro_batches 2,2,2 --reps 1)
run_step bench_train_step 240 "$python" benchmarks/bench_train_step.py "${bench_args[@]}" --json "$out/bench_train_step.json"
# (add the extraction benchmark here, e.g.: run_step bench_extract 60 "$python" benchmarks/bench_extract.py ...)
# ----------------------------------------------------------------------------------------------

if [ "$failures" -eq 0 ]; then say "all steps passed; results in $out"; else say "$failures step(s) failed; results in $out"; fi
[ "$failures" -eq 0 ]
