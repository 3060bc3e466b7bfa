import torch
from safetensors.torch import save_file

from shared.trial import SweepRoot, Trial, is_trial_dir


def _ckpt(path, **meta):
    save_file({"w": torch.zeros(2)}, str(path), metadata=meta or None)


def test_checkpoints_in_training_order_with_metadata(tmp_path):
    t = Trial(tmp_path)
    _ckpt(tmp_path / "lora.safetensors", ss_epoch="3", ss_steps="9")
    _ckpt(tmp_path / "lora-000001.safetensors", ss_epoch="1", ss_steps="3")
    _ckpt(tmp_path / "lora-step00000002.safetensors", ss_epoch="1", ss_steps="2")
    _ckpt(tmp_path / "lora-000002.safetensors")  # no metadata: the name says epoch 2
    (tmp_path / "half.safetensors").write_bytes(b"\x10\x00")
    (tmp_path / "other-000001.safetensors").write_bytes((tmp_path / "lora.safetensors").read_bytes())
    names = [c.stem for c in t.checkpoints("lora")]
    # By step from ss_steps metadata; a file with no metadata and no step in its name sorts last.
    assert names == ["lora-step00000002", "lora-000001", "lora", "lora-000002"]
    by_stem = {c.stem: c for c in t.checkpoints("lora")}
    assert by_stem["lora"].epoch == 3 and by_stem["lora"].step == 9
    assert by_stem["lora-000002"].epoch == 2 and by_stem["lora-000002"].step is None
    assert "half" not in {c.stem for c in t.checkpoints()}
    assert "half" in {p.stem for p in t.checkpoint_paths()}
    assert "other-000001" not in by_stem


def test_paths_and_sweep_root(tmp_path):
    t = Trial(tmp_path / "trial_0001")
    assert t.evaluation_summary_path == tmp_path / "trial_0001" / "realtime_evaluations" / "evaluation_summary.json"
    assert t.checkpoint_eval_dir("lora-000002").name == "lora-000002"
    assert t.state_dir("lora-000002").name == "lora-000002-state"
    root = SweepRoot(tmp_path)
    assert root.trial(12).root.name == "trial_0012"
    (tmp_path / "trial_0002").mkdir()
    (tmp_path / "trial_0001").mkdir()
    (tmp_path / "notes").mkdir()
    assert [x.name for x in root.trials()] == ["trial_0001", "trial_0002"]
    assert root.default_storage.startswith("sqlite:///") and root.default_storage.endswith("study.db")
    assert not is_trial_dir(tmp_path / "trial_0001")
    (tmp_path / "trial_0001" / "params.json").write_text("{}")
    assert is_trial_dir(tmp_path / "trial_0001")
