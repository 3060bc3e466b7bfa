import pytest

from shared import naming


@pytest.mark.parametrize("name", ["lora", "lora_trial_5", "my-lora", "a.b", "x-000001y"])
@pytest.mark.parametrize("epoch", [1, 2, 15, 999999])
def test_epoch_names_round_trip(name, epoch):
    stem = naming.epoch_stem(name, epoch)
    parsed = naming.parse_stem(stem, name)
    assert parsed == naming.CheckpointName(name, "epoch", epoch=epoch)
    assert parsed.stem == stem
    assert naming.parse_stem(parsed.filename) == parsed


@pytest.mark.parametrize("step", [2, 500, 12345678])
def test_step_names_round_trip(step):
    stem = naming.step_stem("lora1", step)
    assert stem == f"lora1-step{step:08d}"
    assert naming.parse_stem(stem) == naming.CheckpointName("lora1", "step", step=step)


def test_final_name_and_state_dirs():
    assert naming.parse_stem("lora1.safetensors", "lora1") == naming.CheckpointName("lora1", "final")
    assert naming.state_dirname("lora1-000002") == "lora1-000002-state"
    assert naming.parse_state_dirname("lora1-000002-state", "lora1") == naming.CheckpointName("lora1", "epoch", epoch=2)
    assert naming.parse_state_dirname("lora1-state", "lora1") == naming.CheckpointName("lora1", "final")
    assert naming.parse_state_dirname("lora1-step00000004-state") == naming.CheckpointName("lora1", "step", step=4)
    assert naming.parse_state_dirname("logs") is None


def test_seed_example_names():
    # The seed notes' sweep: --output_name lora_trial_5 --save_every_n_epochs 2, 12 epochs.
    stems = [naming.epoch_stem("lora_trial_5", e) for e in (2, 4, 6, 8, 10)] + ["lora_trial_5"]
    assert stems[0] == "lora_trial_5-000002"
    kinds = [naming.parse_stem(s, "lora_trial_5").kind for s in stems]
    assert kinds == ["epoch"] * 5 + ["final"]


def test_other_runs_files_are_rejected_when_name_given():
    with pytest.raises(ValueError):
        naming.parse_stem("other-000002", "lora")
    assert naming.parse_stem("other-000002").output_name == "other"


def test_onetrainer_save_names_give_step_and_epoch():
    """OneTrainer writes no ss_steps/ss_epoch; its save names carry them: <prefix><timestamp>-save-<global step>-
    <finished epochs>-<step in epoch> (GenericTrainer). A mid-epoch save belongs to the next epoch, as in
    sd-scripts' ss_epoch."""
    assert naming.onetrainer_progress("luca2026-11-23_10-00-00-save-40-1-0.safetensors") == (40, 1)
    assert naming.onetrainer_progress("2026-11-23_10-00-00-save-50-1-10") == (50, 2)
    assert naming.onetrainer_progress("my-lora-2024-01-02_03-04-05-save-7-0-7.safetensors") == (7, 1)
    for other in ("lora-000004", "lora-step00000500", "lora", "lora-save-40-1-0", "x2026-11-23_10-00-00"):
        assert naming.onetrainer_progress(other) is None, other
