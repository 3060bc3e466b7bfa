#!/usr/bin/env bash
# Run on a GPU machine (the device tool; its image has torch, transformers and peft, and bench/gpu_wheels.sh
# brings the rest as wheels in .whl/): installs the wheels, then runs one part of the GPU measurements,
# each sized to finish inside the tool's 10 minutes a command (an estimate until a GPU has run them),
# logging to $OUT/<part>.log.
#
#   bench/gpu_bench.sh sd15-compile  # issue #12's measurement in one call: bench_evaluator.py --sd15 --compile (the
#                                    # daemon compiled, the plain generation eager), 3 checkpoints, short trainer runs
#   bench/gpu_bench.sh sd15          # bench_evaluator.py --sd15: daemon vs plain generation, fresh process, trainer steps/s
#   bench/gpu_bench.sh acceleration  # bench_acceleration.py --sd15: eager / channels_last / torch.compile
#   bench/gpu_bench.sh sdxl          # bench_evaluator.py --sdxl at 1024 px, 2 images a batch (three processes
#                                    # hold SDXL at once: plain, daemon, fresh process); trainer steps/s left out
#   bench/gpu_bench.sh acceleration-sdxl  # bench_acceleration.py --sdxl
#   bench/gpu_bench.sh check         # only the setup: versions, GPU, demo assets
#
# device tool call: command "bash bench/gpu_bench.sh sd15-compile", carry [".whl"], timeout_s 600. A session has
# 15 minutes of device time, the machine's start included: sd15-compile first, as the only call if need be.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?"part: sd15-compile | sd15 | acceleration | sdxl | acceleration-sdxl | check"}
PY=${PY:-python3}
case "$part" in
  check) cmd=() ;;
  sd15-compile) cmd=(bench/bench_evaluator.py --sd15 --compile --checkpoints 3 --train-epochs 4) ;;
  sd15) cmd=(bench/bench_evaluator.py --sd15) ;;
  acceleration) cmd=(bench/bench_acceleration.py --sd15) ;;
  sdxl) cmd=(bench/bench_evaluator.py --sdxl --checkpoints 3 --train-epochs 0 --batch-size 2) ;;
  acceleration-sdxl) cmd=(bench/bench_acceleration.py --sdxl --repeats 3) ;;
  *) echo "gpu_bench: unknown part $part" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/epochscope-gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_bench: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1 DIFFUSERS_VERBOSITY=error
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, diffusers, transformers, peft, open_clip; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| cuda', torch.cuda.is_available(), '| diffusers', diffusers.__version__, '| transformers',
transformers.__version__, '| peft', peft.__version__, '| open_clip', open_clip.__version__); print('cpu cores', __import__('os').cpu_count())"
  "$PY" -m shared.demo_assets
} 2>&1 | tee "$OUT/setup.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
[ ${#cmd[@]} -gt 0 ] || exit 0
shift
echo "\$ $PY ${cmd[*]} $*" | tee "$OUT/$part.log"
"$PY" "${cmd[@]}" "$@" 2>&1 | tee -a "$OUT/$part.log"
exit "${PIPESTATUS[0]}"
