#!/usr/bin/env bash
# Runs the test suite; pytest's exit code 5 (nothing collected) is reported as its own failure.
#
# The suite runs on several pytest-xdist workers: on one, a core sat idle about half the time (most tests wait
# on the trainer and evaluator processes they start). One worker per core, as long as each has 4 GB beside the
# 10 GB that the largest test (a full-size model, see tests/_disk.py) takes; TEST_WORKERS=N overrides, and
# TEST_WORKERS=1 runs the suite in one process, as before. The workers split the cores: each test's torch
# (and each trainer and evaluator it starts) gets OMP_NUM_THREADS = cores / workers, unless it is set, because
# torch's default of a thread per core, times the workers, spins its threads against each other (2 workers at
# the default: 29 min 19 s on 2 cores, against 35 min 14 s on one worker).
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${VENV:-.venv}/bin/python"
mkdir -p test-artifacts
workers="${TEST_WORKERS:-$("$PY" -c '
import os
cores = len(os.sched_getaffinity(0))
avail_gb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemAvailable:")) / 2**20
print(max(1, min(cores, int((avail_gb - 10) // 4))))' 2>/dev/null || echo 1)}"
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadgroup)  # loadgroup: the full-size-model tests share one worker
  cores=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / workers > 0 ? cores / workers : 1 ))}"
fi
echo "run_tests: $workers worker(s)${OMP_NUM_THREADS:+, OMP_NUM_THREADS=$OMP_NUM_THREADS}" >&2
"$PY" -m pytest "${parallel[@]}" --durations=15 "$@"  # the slowest tests, to keep CI short
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests - treating as an error, not a pass" >&2
  exit 5
fi
exit "$rc"
