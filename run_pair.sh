#!/usr/bin/env bash
# Train and evaluate side by side, each on the right GPU, and shut both down cleanly.
#
#   ./run_pair.sh [CONFIG] [TRAINER OPTIONS]    one trial (default: configs/demo.toml; default option --new)
#   ./run_pair.sh CONFIG --continue             resume a stopped run; nothing already scored is scored again
#   ./run_pair.sh --sweep SWEEP.toml [--root DIR] [--n-trials N] [--storage URL] [--study NAME]
#   ./run_pair.sh --dry-run ...                 print the two commands and their GPUs, start nothing
#
# GPUs: 2+ -> trainer on all but the last, evaluator on the last; 1 -> shared (evaluation.gpu_sharing);
# 0 -> CPU (the cores are split between the two). TRAIN_GPUS="0,1" / EVAL_GPU=2 override ("cpu" is allowed).
# Ctrl-C or SIGTERM, at any moment: the trainer stops at a resumable point (builtin: it saves a checkpoint
# and its state first; sd-scripts: its last complete checkpoint and state are kept), the evaluator finishes
# its current checkpoint; a second Ctrl-C stops both at once. Nothing is left running.
# Exit status: the trainer's (or the sweep's), or the evaluator's if that succeeded and the evaluator
# failed by itself (one we asked to stop is no failure). Interrupted: 130.
# On a terminal, the trainer's progress is one live line at the bottom, redrawn in place, with every
# other line printed whole above it (EPOCHSCOPE_LIVE_STATUS=0: plain lines every few seconds instead).
set -u
# From the first instruction: a signal is remembered (and forwarded once something runs), never lost.
TRAIN_PID=""; EVAL_PID=""; interrupted=0
train_ready=0   # 1 once the trainer handles SIGINT (its status names its pid); until then a signal waits
LIVE_FD=""; LIVE_PID=""   # the live renderer's input and pid, once started (a terminal only)
say() {  # a line of our own: through the live renderer when there is one, so it never cuts the status line
  if [ -n "$LIVE_FD" ]; then echo "$*" >&"$LIVE_FD"; else echo "$*"; fi
}
forward() {  # Ctrl-C / SIGTERM / hang-up: ask both process groups to stop (a second time: at once)
  interrupted=$((interrupted + 1))
  [ "$interrupted" -eq 1 ] && [ -n "$TRAIN_PID$EVAL_PID" ] &&
    say "run_pair: stopping (the trainer stops at a resumable point; Ctrl-C again to stop at once)"
  [ "$train_ready" -eq 0 ] || [ -z "$TRAIN_PID" ] || kill -INT -- "-$TRAIN_PID" 2>/dev/null
  [ -z "$EVAL_PID" ] || kill -INT -- "-$EVAL_PID" 2>/dev/null
}
trap forward INT TERM HUP
bail_if_interrupted() { [ "$interrupted" -eq 0 ] || { echo "run_pair: interrupted before training started" >&2; exit 130; }; }
CALLER_PWD=$PWD
cd "$(dirname "$0")" || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_PWD/$1" ;; esac; }
usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------- arguments
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
sweep=0; sweep_root=""; extra=()
if [ "${1:-}" = "--sweep" ]; then
  [ -n "${2:-}" ] || { echo "run_pair: --sweep needs a sweep TOML file, e.g. configs/demo-sweep.toml" >&2; exit 2; }
  sweep=1; CONFIG=$(abspath "$2"); shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --root) [ -n "${2:-}" ] || { echo "run_pair: --root needs a folder" >&2; exit 2; }
              sweep_root=$(abspath "$2"); extra+=(--root "$sweep_root"); shift 2 ;;
      --root=*) sweep_root=$(abspath "${1#--root=}"); extra+=(--root "$sweep_root"); shift ;;
      *) extra+=("$1"); shift ;;
    esac
  done
else
  CONFIG=$PWD/configs/demo.toml
  if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then CONFIG=$(abspath "$1"); shift; fi
  extra=("$@")
  case " ${extra[*]:-} " in *" --new "*|*" --continue "*) ;; *) extra=(--new "${extra[@]}") ;; esac
fi

# ---------------------------------------------------------------- environment (the README's first command)
if [ ! -f .venv/.epochscope-installed ]; then
  echo "run_pair: first run: setting up .venv (a few minutes)"
  make setup || exit 1
fi
bail_if_interrupted
PY=$PWD/.venv/bin/python

# Where the trial (or sweep root) lives and how one GPU is shared come from the config, resolved as the
# trainer resolves it. Output: "<gpu_sharing> <folder>" (the folder may contain spaces).
read -r SHARING TARGET < <("$PY" - "$CONFIG" "$sweep" "$sweep_root" <<'PY'
import sys
from shared.config import load_config
from shared.errors import EpochscopeError
path, sweep, root = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
try:
    c = load_config(path)
except EpochscopeError as e:
    sys.exit(f"run_pair: {e}")
if sweep and c.sweep is None:
    sys.exit(f"run_pair: {path} has no [sweep] table; see configs/demo-sweep.toml")
print(c.evaluation.gpu_sharing, root or (c.sweep.root if sweep else c.output.dir))
PY
)
bail_if_interrupted
[ -n "${TARGET:-}" ] || exit 2   # the config error is already on stderr

# ---------------------------------------------------------------- GPU placement
ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
all_gpus=""; [ "$ngpu" -gt 0 ] && all_gpus=$(seq -s, 0 $((ngpu - 1)))
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then   # the caller's choice of GPUs is the pool we place in
  all_gpus=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr -d ' ')
  ngpu=0; [ -n "$all_gpus" ] && ngpu=$(printf '%s\n' "${all_gpus//,/$'\n'}" | grep -c .)
fi
without() {  # without "0,1,2" "1,2" -> "0"
  local out="" g
  for g in ${1//,/ }; do case ",$2," in *",$g,"*) ;; *) out="${out:+$out,}$g" ;; esac; done
  printf '%s' "$out"
}
if [ -n "${TRAIN_GPUS:-}" ] && [ -n "${EVAL_GPU:-}" ]; then
  train_gpus=$TRAIN_GPUS; eval_gpu=$EVAL_GPU
elif [ -n "${TRAIN_GPUS:-}" ]; then
  train_gpus=$TRAIN_GPUS; rest=$(without "$all_gpus" "$TRAIN_GPUS")
  if [ -n "$rest" ]; then eval_gpu=${rest##*,}; elif [ "$TRAIN_GPUS" = cpu ]; then eval_gpu=cpu
  else eval_gpu=${TRAIN_GPUS##*,}; fi
elif [ -n "${EVAL_GPU:-}" ]; then
  eval_gpu=$EVAL_GPU; train_gpus=$(without "$all_gpus" "$EVAL_GPU")
  [ -n "$train_gpus" ] || train_gpus=${EVAL_GPU}
elif [ "$ngpu" -ge 2 ]; then
  eval_gpu=${all_gpus##*,}; train_gpus=${all_gpus%,*}
elif [ "$ngpu" -eq 1 ]; then
  train_gpus=$all_gpus; eval_gpu=$all_gpus
else
  train_gpus=cpu; eval_gpu=cpu
fi
[ "$train_gpus" = cpu ] && train_gpus=""
[ "$eval_gpu" = cpu ] && eval_gpu=""
eval_args=(--device cpu)
if [ -n "$eval_gpu" ]; then
  eval_args=(--device cuda:0)   # cuda:0 of its own CUDA_VISIBLE_DEVICES
  case ",$train_gpus," in *",$eval_gpu,"*) eval_args+=(--gpu-sharing "$SHARING") ;; esac
elif [ -z "$train_gpus" ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  # Both on the CPU: split the cores, or each oversubscribes them and both crawl (the demo: 8x slower).
  cores=$(nproc 2>/dev/null || echo 2)
  export OMP_NUM_THREADS=$(( cores / 2 > 0 ? cores / 2 : 1 ))
fi

if [ "$sweep" = 1 ]; then
  train_cmd=("$PY" -m trainer sweep --config "$CONFIG" --evaluator none "${extra[@]}"); train_tag=sweep
  watch_cmd=("$PY" -m evaluator watch --dir "$TARGET" "${eval_args[@]}")
else
  train_cmd=("$PY" -m trainer run --config "$CONFIG" "${extra[@]}"); train_tag=trainer
  watch_cmd=("$PY" -m evaluator watch --dir "$TARGET" "${eval_args[@]}" --exit-when-done)
fi
eval_where=cpu; [ -z "$eval_gpu" ] || eval_where="GPU $eval_gpu"
echo "run_pair: ${train_tag/trainer/trial} $TARGET | trainer GPUs: ${train_gpus:-cpu} | evaluator: $eval_where"
if [ "$dry_run" = 1 ]; then
  echo "run_pair: $train_tag: CUDA_VISIBLE_DEVICES=$train_gpus ${train_cmd[*]}"
  echo "run_pair: evaluator: CUDA_VISIBLE_DEVICES=$eval_gpu ${watch_cmd[*]}"
  exit 0
fi
# The offline demo model and dataset, built once (cached) when the config uses them.
if grep -q '"demo:' "$CONFIG"; then "$PY" -m shared.demo_assets >/dev/null || { bail_if_interrupted; exit 1; }; fi

# ---------------------------------------------------------------- run both
bail_if_interrupted
# One id for this run, given to both: the evaluator's --exit-when-done waits for this trainer's end,
# never for the previous run's final status.
[ "$sweep" = 1 ] || export EPOCHSCOPE_RUN_ID="${EPOCHSCOPE_RUN_ID:-pair-$$-$(date +%s%N)}"

start() {  # start TAG CUDA_DEVICES CMD...: the command in its own session, output prefixed with [TAG]
  local tag=$1 devices=$2; shift 2
  # The prefixer ignores Ctrl-C so the last lines of a stopping process still get through. On a terminal
  # both prefixers feed the one live renderer (lines of up to 4 KiB reach a pipe whole, never interleaved).
  if [ -n "$LIVE_FD" ]; then
    exec {fd}> >(trap '' INT TERM HUP; exec sed -u "s/^/[$tag] /" >&"$LIVE_FD")
    PREFIXERS+=("$!")
    CUDA_VISIBLE_DEVICES=$devices setsid "$@" >&"$fd" 2>&1 {LIVE_FD}>&- &
  else
    exec {fd}> >(trap '' INT TERM HUP; exec sed -u "s/^/[$tag] /")
    PREFIXERS+=("$!")
    CUDA_VISIBLE_DEVICES=$devices setsid "$@" >&"$fd" 2>&1 &
  fi
  STARTED=$!
  exec {fd}>&-
  # Until setsid has run there is no group to signal: a Ctrl-C forwarded then would be lost.
  for _ in $(seq 250); do
    kill -0 -- "-$STARTED" 2>/dev/null && break
    kill -0 "$STARTED" 2>/dev/null || break
    sleep 0.02
  done
}
wait_pid() {  # wait survives the trapped signals; returns the child's exit status
  local rc
  while :; do
    wait "$1"; rc=$?
    kill -0 "$1" 2>/dev/null || return "$rc"
  done
}
stop_after() {  # stop_after PID SECS NOTE: give a process SECS to exit by itself, then ask it to stop
  # (SIGINT: it finishes the checkpoint in hand), and SIGKILL it only if it is still there after
  # EVAL_KILL_GRACE more seconds. NOTE says why; the file $ASKED_TO_STOP records that we asked.
  local pid=$1 secs=$2 note=$3
  for _ in $(seq $((secs * 10))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  [ -z "$note" ] || say "run_pair: $note"
  : > "$ASKED_TO_STOP"
  kill -INT -- "-$pid" 2>/dev/null
  for _ in $(seq $(( ${EVAL_KILL_GRACE:-120} * 10 ))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  say "run_pair: the evaluator did not stop within ${EVAL_KILL_GRACE:-120} s of being asked: killing it"
  kill -KILL -- "-$pid" 2>/dev/null
}
ASKED_TO_STOP=$(mktemp "${TMPDIR:-/tmp}/run_pair.XXXXXX"); rm -f "$ASKED_TO_STOP"

PREFIXERS=()
mkdir -p "$TARGET"
if [ "$sweep" = 0 ] && [ -t 1 ] && [ "${EPOCHSCOPE_LIVE_STATUS:-1}" != 0 ]; then
  # One renderer owns the terminal: the trainer's status on the bottom line, every other line above it.
  exec {LIVE_FD}> >(trap '' INT TERM HUP; exec "$PY" -m trainer.reporting --live)
  LIVE_PID=$!
  export EPOCHSCOPE_LIVE_STATUS=1
else
  export EPOCHSCOPE_LIVE_STATUS=0
fi
start "$train_tag" "$train_gpus" "${train_cmd[@]}"; TRAIN_PID=$STARTED
train_rc=""
if [ "$sweep" = 0 ]; then
  # Start the evaluator once this trainer owns the folder: a previous run's final status must not make
  # it exit, and --new moves that run's files aside first. A trainer that fails before that gets none.
  # A Ctrl-C before then is passed on at that moment: a Python that is still starting (with SIGINT
  # ignored, as bash starts background jobs) would lose it.
  while kill -0 "$TRAIN_PID" 2>/dev/null; do
    grep -Eqs "\"pid\": *$TRAIN_PID[,} ]" "$TARGET/trainer_status.json" && break
    sleep 0.1
  done
fi
train_ready=1
[ "$interrupted" -eq 0 ] || kill -INT -- "-$TRAIN_PID" 2>/dev/null   # a Ctrl-C that came while it started
if [ "$sweep" = 0 ] && ! kill -0 "$TRAIN_PID" 2>/dev/null; then wait_pid "$TRAIN_PID"; train_rc=$?; fi
if [ "$interrupted" -eq 0 ] && [ "${train_rc:-0}" -eq 0 ]; then
  start evaluator "$eval_gpu" "${watch_cmd[@]}"; EVAL_PID=$STARTED
fi

[ -n "$train_rc" ] || { wait_pid "$TRAIN_PID"; train_rc=$?; }
eval_rc=0
if [ -n "$EVAL_PID" ]; then
  if [ "$sweep" = 1 ]; then
    # A sweep's evaluator has no end of its own: it scores what is left, then we ask it to stop.
    stop_after "$EVAL_PID" "${EVAL_GRACE:-20}" "" &
  elif [ "$train_rc" -ne 0 ] || [ "$interrupted" -gt 0 ]; then
    # It exits by itself once the trainer is final and what exists is scored; this is only a backstop.
    stop_after "$EVAL_PID" "${EVAL_GRACE:-60}" "the evaluator did not exit by itself: asking it to stop" &
  fi
  wait_pid "$EVAL_PID"; eval_rc=$?
  # An evaluator we asked to stop reports that (130): that is no failure of the pair.
  if [ -e "$ASKED_TO_STOP" ] && [ "$eval_rc" -eq 130 ]; then eval_rc=0; fi
fi
# The renderer ends once every writer has closed its input: ours first (`wait` below waits for it too).
if [ -n "$LIVE_FD" ]; then exec {LIVE_FD}>&-; LIVE_FD=""; fi
wait 2>/dev/null   # the grace timer
rm -f "$ASKED_TO_STOP"
for pid in "${PREFIXERS[@]}" ${LIVE_PID:+"$LIVE_PID"}; do   # let them print the last lines before the table
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done

# ---------------------------------------------------------------- what the user sees at the end
echo
if [ "$sweep" = 1 ]; then
  "$PY" -m evaluator report --dir "$TARGET" | sed 's/^/run_pair: /'
else
  "$PY" -m evaluator report --dir "$TARGET" --table | sed 's/^report: /run_pair: report: /'
fi
if [ "$interrupted" -gt 0 ] && [ "$sweep" = 0 ]; then
  echo "run_pair: stopped; to go on where it stopped: $0 $CONFIG --continue"
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
