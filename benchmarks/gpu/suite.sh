#!/usr/bin/env bash
# The GPU benchmark suite in one call (issue 35; docs/gpu.md):
#
#   bash benchmarks/gpu/suite.sh            on a lent GPU machine, whole in 8 minutes
#   bash benchmarks/gpu/suite.sh --smoke    the same steps at tiny sizes on a CPU (or SMOKE=1)
#
# On the GPU machine (Python 3.12, JAX with its CUDA plugin, PyTorch; no
# network) it installs benchmarks/gpu/wheels/ (made beforehand by
# benchmarks/gpu/wheels.sh, carried along) into a private directory, prints
# the device and the versions, then runs each step of benchmarks/gpu/suite.py
# in a process of its own under `timeout`, so that one hang costs only its
# own limit; a step that fails or runs out of time records why and the suite
# goes on. A step's limit is its nominal one plus what the earlier steps left
# unused, never more than keeps the later steps' nominal limits inside the
# budget (470 s, setup included).
#
# Results: $OUT/summary.json (every step's record, the key figures, the
# targets) and $OUT/steps.tar.gz (the records and the logs), rewritten after
# every step; a short table at the end. OUT defaults to runs/gpu_suite.
# PYTHON picks the interpreter (default python3; .venv/bin/python in smoke
# mode when there is one). The exit status is 0 when every step is ok or
# skipped.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MODE=gpu
[[ "${SMOKE:-0}" == 1 ]] && MODE=smoke
for arg in "$@"; do
  case "$arg" in
    --smoke) MODE=smoke ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "suite.sh: unknown argument $arg (--smoke, --help)" >&2; exit 2 ;;
  esac
done

if [[ $MODE == smoke && -x "$ROOT/.venv/bin/python" ]]; then
  PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
fi
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$ROOT/runs/gpu_suite}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/inception_jax_gpu_suite.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/steps" "$WORK/logs"
SUITE=benchmarks/gpu/suite.py

install_wheels() {
  # Only the packages the image lacks, no dependencies (wheels.sh fetched
  # those the image lacks too), into a directory of our own: the image's
  # Python stays as it is.
  local wheels=benchmarks/gpu/wheels
  if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "suite.sh: no wheels in $wheels: run 'bash benchmarks/gpu/wheels.sh' on a machine" \
         "with PyPI and carry benchmarks/gpu/wheels along" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$WORK/site" "$wheels"/*.whl
  export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

# Whether this XLA accepts the flags $1: a flag it does not know aborts every
# process, so an optional one is tried in a process of its own first.
xla_accepts() {
  XLA_FLAGS="$1" timeout 30 "$PYTHON" -c \
    'import jax; jax.jit(lambda x: x + 1)(1).block_until_ready()' >"$WORK/logs/flags.log" 2>&1
}

gpu_environment() {
  export JAX_PLATFORMS=cuda
  # Cold compilations: compile times are figures here, and no earlier run's
  # programs should stand in for this code's.
  export JAX_COMPILATION_CACHE_DIR=
  # XLA's defaults, which a user gets, plus one flag that changes no program:
  # XLA's persisted autotuning, its results (which kernel configuration or
  # library algorithm is fastest for an instruction) kept in files shared by
  # the steps' processes, so that what the 64-image batch's step tuned is
  # not timed again by the accumulation and training steps, which compute
  # the same shapes; dropped if this XLA refuses it.
  local flags="--xla_gpu_per_fusion_autotune_cache_dir=$WORK/autotune"
  if xla_accepts "$flags"; then
    export XLA_FLAGS="$flags"
  else
    echo "suite.sh: this XLA refuses $flags; running with XLA's defaults" >&2
    export XLA_FLAGS= SUITE_DROPPED_XLA_FLAGS="$flags"
  fi
}

smoke_environment() {
  export JAX_PLATFORMS=cpu
  # The tests' quick compilation (tests/helpers.py), on one device as on one
  # GPU: XLA's lowest backend level, and XLA:CPU's older fusion code generator
  # where this XLA still has it.
  local flags=--xla_backend_optimization_level=0 old=--xla_cpu_use_fusion_emitters=false
  if xla_accepts "$flags $old"; then
    flags+=" $old"
  fi
  export XLA_FLAGS="$flags"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

if [[ $MODE == gpu ]]; then
  install_wheels
  gpu_environment
else
  # The 3.12 wheels do not fit a CI venv of another Python; its packages are there.
  smoke_environment
fi
export PYTHONUNBUFFERED=1

# The plan: "budget SECONDS", then one "STEP SECONDS" a line.
mapfile -t PLAN < <("$PYTHON" "$SUITE" plan "$MODE")
if [[ "${PLAN[0]:-}" != budget* ]]; then
  echo "suite.sh: $PYTHON $SUITE plan $MODE gave no plan" >&2
  exit 2
fi
BUDGET=${PLAN[0]#budget }
PLAN=("${PLAN[@]:1}")
SUITE_SETUP_S=$SECONDS "$PYTHON" "$SUITE" start --mode "$MODE" --work "$WORK" --out "$OUT"
echo "inception_jax GPU suite ($MODE mode): ${#PLAN[@]} steps within $BUDGET s; results in $OUT"

# Seconds each step costs besides its limit: timeout's grace before it
# kills, and the bookkeeping.
OVERHEAD=3
for i in "${!PLAN[@]}"; do
  read -r name nominal <<<"${PLAN[$i]}"
  later=0
  for rest in "${PLAN[@]:$((i + 1))}"; do
    later=$((later + ${rest#* } + OVERHEAD))
  done
  limit=$((BUDGET - SECONDS - later - OVERHEAD))
  ((limit < nominal)) && limit=$nominal
  echo "== $name (limit $limit s)"
  start=$SECONDS
  set +e
  timeout -k 2 "$limit" "$PYTHON" "$SUITE" run "$name" --mode "$MODE" --work "$WORK" \
    2>&1 | tee "$WORK/logs/$name.log"
  status=${PIPESTATUS[0]}
  set -e
  "$PYTHON" "$SUITE" collect "$name" --mode "$MODE" --work "$WORK" --out "$OUT" \
    --exit-status "$status" --seconds "$((SECONDS - start))" --limit-s "$limit"
done

"$PYTHON" "$SUITE" summary --mode "$MODE" --work "$WORK" --out "$OUT"
