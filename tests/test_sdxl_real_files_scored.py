"""Real sd-scripts SDXL network files (``tests/data/kohya_sdxl``: LoRA UNet+both text encoders, LoRA UNet
only, LoCon, LyCORIS LoKr) scored by the real evaluator on an SDXL-1.0-architecture base with random weights,
with every key applied. sd-scripts hard-codes SDXL's shapes, so the base is full size (built offline by
``tests/_sd_scripts_helpers.build_sdxl_random``, 6.5 GB on disk) and the test needs the memory to hold it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_cli
from shared.jsonio import read_model
from shared.records import CheckpointMetrics
from shared.safetensors_info import inspect
from shared.trial import Trial
from _disk import FULL_SIZE_MODEL

DATA = Path(__file__).parent / "data" / "kohya_sdxl"
NEEDED_GB = 16


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


pytestmark = [FULL_SIZE_MODEL, pytest.mark.slow, pytest.mark.skipif(
    _memory_gb() < NEEDED_GB, reason=f"the full-size SDXL base needs about {NEEDED_GB} GB of memory in bf16; "
                                     f"this machine has {_memory_gb():.0f} GB")]

KIND_NAMES = {"lora": "LoRA", "locon": "LoRA", "lokr": "LoKr", "loha": "LoHa"}


def test_real_sd_scripts_sdxl_files_are_scored_with_every_key_applied(tmp_path, demo_assets):
    from _sd_scripts_helpers import build_sdxl_random

    base = build_sdxl_random(REPO_ROOT / ".cache" / "sdxl-random")
    manifest = [e for e in json.loads((DATA / "manifest.json").read_text())["files"] if e.get("path")]
    folder = tmp_path / "kohya_output"
    folder.mkdir()
    expected: dict[str, str] = {}
    for entry in manifest:
        src = DATA / entry["path"]
        if not src.exists() or src.stem.endswith("-000001"):
            continue
        shutil.copy(src, folder / src.name)
        modules = {k.split(".")[0] for k in inspect(src).tensor_names}
        expected[src.stem] = f"{KIND_NAMES[entry['kind']]} ({len(modules)} modules)"
    assert len(expected) >= 4, expected
    cfg = tmp_path / "eval.toml"
    cfg.write_text(f"""
[model]
base = "{base}"
[dataset]
resolution = 64
[evaluation]
prompts = ["a red circle, sks"]
num_samples = 1
steps = 2
guidance_scale = 5.0
clip_model = "demo:tiny-clip"
""")
    out = run_cli("evaluator", "run", "--dir", str(folder), "--config", str(cfg), "--device", "cpu", "--dtype", "bf16",
                  timeout=2400)
    records = {}
    for path in Trial(folder).evaluations_dir.glob("*/metrics.json"):
        record = read_model(path, CheckpointMetrics)
        records[record.checkpoint] = record
    assert set(expected) <= set(records), (sorted(records), out.stderr[-3000:])
    for stem, description in expected.items():
        record = records[stem]
        assert record.generation["network"] == description, (stem, record.generation)  # every module merged
        assert record.generation["size_conditioning"], record.generation
        assert record.samples and not record.samples[0].failed
