"""The evaluator shows its backlog: per checkpoint, which one it scores and how many wait behind it."""

from __future__ import annotations

import re

import pytest

from conftest import copy_trial, run_cli

pytestmark = pytest.mark.slow


def test_each_scoring_names_the_checkpoint_and_the_backlog(tmp_path, trained_trial):
    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    out = run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu", "--num-samples", "2")
    lines = re.findall(r"scoring (.+) \((\d+) more waiting\)", out.stdout + out.stderr)
    assert lines == [("the baseline", "3"), ("lora-000001.safetensors", "2"), ("lora-000002.safetensors", "1"),
                     ("lora.safetensors", "0")], out.stderr
    again = run_cli("evaluator", "run", "--dir", str(t.root), "--device", "cpu", "--num-samples", "2", "--force")
    assert re.findall(r"scoring (.+) \((\d+) more waiting\)", again.stdout + again.stderr)[1] == (
        "lora-000001.safetensors", "2")  # --force: the scored ones count as waiting again
