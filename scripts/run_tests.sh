#!/usr/bin/env bash
# Runs the test suite; pytest's exit code 5 (nothing collected) is reported as its own failure.
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p test-artifacts
"${VENV:-.venv}/bin/python" -m pytest --durations=15 "$@"  # the slowest tests, to keep CI short
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests - treating as an error, not a pass" >&2
  exit 5
fi
exit "$rc"
