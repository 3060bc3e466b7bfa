#!/usr/bin/env bash
# Train and evaluate side by side, each on the right GPU, and shut both down cleanly.
#
#   ./run_pair.sh [CONFIG]                      one trial (default: configs/demo.toml)
#   ./run_pair.sh --sweep SWEEP.toml [--root DIR] [--n-trials N] [--storage URL] [--study NAME]
#
# GPUs: 2+ -> trainer on all but the last, evaluator on the last; 1 -> shared (evaluation.gpu_sharing);
# 0 -> CPU. TRAIN_GPUS="0,1" / EVAL_GPU=2 override. Ctrl-C: the trainer saves and stops, the
# evaluator finishes its current checkpoint; a second Ctrl-C stops both at once.
# Exit status: the trainer's, or the evaluator's if the trainer succeeded and the evaluator did not.
set -u
cd "$(dirname "$0")" || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ ! -f .venv/.epochscope-installed ]; then
  echo "run_pair: first run: setting up .venv (a few minutes)"
  make setup || exit 1
fi
PY=.venv/bin/python

sweep=""; sweep_args=()
if [ "${1:-}" = "--sweep" ]; then
  sweep="${2:?--sweep needs a TOML file}"; shift 2
  sweep_args=("$@")
  CONFIG="$sweep"
else
  CONFIG="${1:-configs/demo.toml}"
fi

# Where the trial (or sweep root) lives, and the GPU sharing mode, come from the config.
read -r TARGET SHARING < <("$PY" - "$CONFIG" "$sweep" "${sweep_args[@]}" <<'PY'
import sys
from shared.config import load_config
from shared.errors import EpochscopeError
cfg, sweep, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    c = load_config(cfg)
except EpochscopeError as e:
    print(f"ERROR {e}"); sys.exit(0)
if sweep:
    root = c.sweep.root if c.sweep else "sweeps/default"
    if "--root" in rest:
        import os; root = os.path.abspath(rest[rest.index("--root") + 1])
    print(root, c.evaluation.gpu_sharing)
else:
    print(c.output.dir, c.evaluation.gpu_sharing)
PY
)
if [ "${TARGET:-ERROR}" = "ERROR" ] || [ -z "${TARGET:-}" ]; then
  "$PY" -m trainer run --config "$CONFIG" --dry-run >/dev/null   # prints the config error
  exit 2
fi
grep -q '"demo:' "$CONFIG" 2>/dev/null || grep -q "demo:" "$CONFIG" && "$PY" -m shared.demo_assets >/dev/null

ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
if [ -n "${TRAIN_GPUS:-}" ] || [ -n "${EVAL_GPU:-}" ]; then
  train_gpus="${TRAIN_GPUS:-0}"; eval_gpu="${EVAL_GPU:-${train_gpus##*,}}"
elif [ "$ngpu" -ge 2 ]; then
  train_gpus=$(seq -s, 0 $((ngpu - 2))); eval_gpu=$((ngpu - 1))
elif [ "$ngpu" -eq 1 ]; then
  train_gpus=0; eval_gpu=0
else
  train_gpus=""; eval_gpu=""
fi
eval_args=(--device cpu)
if [ -z "$train_gpus" ] && [ -z "$eval_gpu" ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  # Both on the CPU: split the cores, or each oversubscribes them and both crawl.
  cores=$(nproc 2>/dev/null || echo 2)
  export OMP_NUM_THREADS=$(( cores / 2 > 0 ? cores / 2 : 1 ))
fi
if [ -n "$eval_gpu" ]; then
  eval_args=(--device cuda:0)
  [ "$eval_gpu" = "${train_gpus##*,}" ] || [ "$eval_gpu" = "$train_gpus" ] && eval_args+=(--gpu-sharing "$SHARING")
fi
echo "run_pair: ${sweep:+sweep }$TARGET | trainer GPUs: ${train_gpus:-cpu} | evaluator: ${eval_gpu:+GPU $eval_gpu}${eval_gpu:-cpu}"

prefix() { trap '' INT TERM; exec sed -u "s/^/[$1] /"; }
mkdir -p "$TARGET"

if [ -n "$sweep" ]; then
  CUDA_VISIBLE_DEVICES="$train_gpus" setsid "$PY" -m trainer sweep --config "$CONFIG" --evaluator none \
    "${sweep_args[@]}" > >(prefix sweep) 2>&1 &
else
  CUDA_VISIBLE_DEVICES="$train_gpus" setsid "$PY" -m trainer run --config "$CONFIG" --new \
    > >(prefix trainer) 2>&1 &
fi
TRAIN_PID=$!
if [ -z "$sweep" ]; then
  # Start the evaluator once this trainer owns the folder: a previous run's final status must not
  # make it exit, and --new moves that run's files aside first.
  for _ in $(seq 600); do
    kill -0 "$TRAIN_PID" 2>/dev/null || break
    grep -qs "\"pid\": $TRAIN_PID," "$TARGET/trainer_status.json" && break
    sleep 0.1
  done
fi
watch_args=(--dir "$TARGET" "${eval_args[@]}")
[ -z "$sweep" ] && watch_args+=(--exit-when-done)
CUDA_VISIBLE_DEVICES="$eval_gpu" setsid "$PY" -m evaluator watch "${watch_args[@]}" > >(prefix evaluator) 2>&1 &
EVAL_PID=$!

interrupted=0
forward() {
  interrupted=$((interrupted + 1))
  [ "$interrupted" -eq 1 ] && echo "run_pair: stopping (the trainer saves first; Ctrl-C again to stop at once)"
  kill -INT -- "-$TRAIN_PID" "-$EVAL_PID" 2>/dev/null
}
trap forward INT TERM

wait_pid() {  # wait survives the trapped signals; returns the child's exit status
  local rc
  while :; do
    wait "$1"; rc=$?
    kill -0 "$1" 2>/dev/null || return "$rc"
  done
}
stop_after() {  # give a process some seconds to exit by itself, then stop it
  local pid=$1 secs=$2
  for _ in $(seq $((secs * 10))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -INT -- "-$pid" 2>/dev/null; sleep 5; kill -KILL -- "-$pid" 2>/dev/null
}

wait_pid "$TRAIN_PID"; train_rc=$?
if [ -n "$sweep" ] || [ "$train_rc" -ne 0 ] || [ "$interrupted" -gt 0 ]; then
  # A sweep's evaluator has no end of its own; a failed or stopped trainer leaves little to score.
  stop_after "$EVAL_PID" "${EVAL_GRACE:-20}" &
fi
wait_pid "$EVAL_PID"; eval_rc=$?
wait 2>/dev/null   # the output prefixers and the grace timer

echo
if [ -n "$sweep" ]; then
  "$PY" -m evaluator report --dir "$TARGET" | sed 's/^/run_pair: /'
else
  "$PY" -m evaluator report --dir "$TARGET" --table 2>/dev/null | sed 's/^report: /run_pair: report: /'
fi
if [ "$train_rc" -ne 0 ]; then
  echo "run_pair: trainer exited with status $train_rc" >&2
  exit "$train_rc"
fi
if [ "$eval_rc" -ne 0 ] && [ "$interrupted" -eq 0 ]; then
  echo "run_pair: evaluator exited with status $eval_rc" >&2
  exit "$eval_rc"
fi
exit 0
