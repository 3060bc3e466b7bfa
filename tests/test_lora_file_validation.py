"""A network file that cannot be what it claims is refused, once, by name, before any weight changes.

- Shapes: the weight change each module's factors make (LoRA, 1x1 and k x k LoCon, LoCon with a Tucker core,
  LoHa plain / flattened conv / Tucker, LoKr full / factorised conv / Tucker) must be the layer's
  (out, in[, k, k]); a matching element count alone is not enough (an old bug merged a LoRA for a 64x16 layer
  into a 32x32x1x1 one and scored it).
- Dtypes: weights must be floating point (an int8 or bool copy of a real LoRA was scored); alpha may be an
  integer, as some tools store it.
- A file deleted while it is scored is the daemon's "disappeared" case (FileNotFoundError), not a failure.
- A failure half-way through a swap leaves the base bit-exact.

Real demo model (``demo_assets``), real checkpoints of a real trained trial (``trained_trial``), real
tensors for the planted faults."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import copy_trial
from evaluator import lora_swap
from evaluator.lora_networks import parse_network
from evaluator.lora_swap import LoraSwapper, load_lora_file
from shared.errors import CheckpointError

PROJ_IN = "lora_unet_down_blocks_0_attentions_0_proj_in"  # 32x32x1x1 conv in the demo UNet
TO_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # 32x32 linear
CONV1 = "lora_unet_down_blocks_0_resnets_0_conv1"  # 32x32x3x3 conv


@pytest.fixture(scope="module")
def swapper(demo_assets):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(demo_assets.pipeline_dir / "unet").eval()
    te = CLIPTextModel.from_pretrained(demo_assets.pipeline_dir / "text_encoder").eval()
    return LoraSwapper(unet, te)


def _weights(swapper: LoraSwapper) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().clone() for name, m in swapper.modules.items()}


def _same(before: dict[str, torch.Tensor], swapper: LoraSwapper) -> bool:
    return all(torch.equal(before[name], m.weight) for name, m in swapper.modules.items())


def _real(trained_trial, name: str = "lora") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = trained_trial.checkpoint_path(name)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(str(path)), meta


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


# Every way a module's factors are laid out, as a function of the layer (out, in) they are made for.
LAYOUTS = {
    "LoRA linear": (TO_Q, lambda o, i: {"lora_down.weight": _r(2, i), "lora_up.weight": _r(o, 2)}),
    "LoRA 1x1 conv": (PROJ_IN, lambda o, i: {"lora_down.weight": _r(2, i, 1, 1), "lora_up.weight": _r(o, 2, 1, 1)}),
    "LoCon 3x3 down, 1x1 up": (CONV1, lambda o, i: {"lora_down.weight": _r(2, i, 3, 3),
                                                  "lora_up.weight": _r(o, 2, 1, 1)}),
    "LoCon Tucker mid": (CONV1, lambda o, i: {"lora_down.weight": _r(2, i, 1, 1), "lora_mid.weight": _r(2, 2, 3, 3),
                                              "lora_up.weight": _r(o, 2, 1, 1)}),
    "LoHa linear": (TO_Q, lambda o, i: {"hada_w1_a": _r(o, 2), "hada_w1_b": _r(2, i),
                                        "hada_w2_a": _r(o, 2), "hada_w2_b": _r(2, i)}),
    "LoHa 3x3 conv, flattened": (CONV1, lambda o, i: {"hada_w1_a": _r(o, 2), "hada_w1_b": _r(2, i * 9),
                                                      "hada_w2_a": _r(o, 2), "hada_w2_b": _r(2, i * 9)}),
    "LoHa Tucker": (CONV1, lambda o, i: {"hada_t1": _r(2, 2, 3, 3), "hada_w1_a": _r(2, o), "hada_w1_b": _r(2, i),
                                         "hada_t2": _r(2, 2, 3, 3), "hada_w2_a": _r(2, o), "hada_w2_b": _r(2, i)}),
    "LoKr full": (TO_Q, lambda o, i: {"lokr_w1": _r(4, 2), "lokr_w2": _r(o // 4, i // 2)}),
    "LoKr factorised 3x3 conv": (CONV1, lambda o, i: {"lokr_w1": _r(4, 2), "lokr_w2_a": _r(o // 4, 2),
                                                      "lokr_w2_b": _r(2, i // 2 * 9)}),
    "LoKr Tucker": (CONV1, lambda o, i: {"lokr_w1": _r(4, 2), "lokr_t2": _r(2, 2, 3, 3), "lokr_w2_a": _r(2, o // 4),
                                         "lokr_w2_b": _r(2, i // 2)}),
}


def _file(trained_trial, module: str, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A real checkpoint with one module's tensors replaced by ``parts`` (alpha 1)."""
    state, _ = _real(trained_trial)
    state = {k: v for k, v in state.items() if not k.startswith(module + ".")}
    state.update({f"{module}.{part}": t for part, t in parts.items()})
    state[f"{module}.alpha"] = torch.tensor(1.0)
    return state


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_module_made_for_a_64x16_layer_is_refused_on_a_32x32_one_before_any_weight_changes(
        layout, swapper, trained_trial, tmp_path):
    module, make = LAYOUTS[layout]
    layer = tuple(swapper.modules[module].weight.shape)
    wrong = _file(trained_trial, module, make(64, 16))
    # The dangerous case: a well-formed module for a 64x16 layer of the same kernel, with as many elements as
    # this layer has, so a reshape alone would "fit".
    made_for = torch.Size((64, 16, *layer[2:]))
    assert parse_network(wrong)[module].delta(made_for).numel() == math.prod(layer)
    path = tmp_path / "wrong.safetensors"
    save_file(wrong, str(path))
    before = _weights(swapper)
    with pytest.raises(CheckpointError) as plan_error:
        swapper.plan(wrong)
    with pytest.raises(CheckpointError) as e:
        with swapper.applied(path):
            pytest.fail("a LoRA whose shapes do not fit was applied")
    assert str(e.value) == str(plan_error.value), "refused at plan time, before any layer is touched"
    msg = str(e.value)
    assert module in msg and "x".join(map(str, layer)) in msg, msg
    made = "64x144" if "flattened" in layout else "64x16"  # 64x16, 64x16x3x3, or (flattened) 64x(16*3*3)
    assert f"makes a {made}" in msg, f"the LoRA's shape is not named: {msg}"
    assert _same(before, swapper), "a refused file changed weights"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_same_layout_made_for_the_layer_is_merged_and_restored(layout, swapper, trained_trial, tmp_path):
    module, make = LAYOUTS[layout]
    path = tmp_path / "right.safetensors"
    save_file(_file(trained_trial, module, make(32, 32)), str(path))
    before = _weights(swapper)
    with swapper.applied(path) as n:
        assert n > 1
        assert not torch.equal(swapper.modules[module].weight, before[module]), "the planted module was not merged"
    assert _same(before, swapper)


def test_mismatched_inner_factors_and_dora_scale_are_refused_at_plan_time(swapper, trained_trial):
    # LoHa factors that would broadcast ((32, 32) * (1, 32)) instead of failing.
    broadcast = {"hada_w1_a": _r(32, 2), "hada_w1_b": _r(2, 32), "hada_w2_a": _r(1, 2), "hada_w2_b": _r(2, 32)}
    with pytest.raises(CheckpointError, match=f"{TO_Q}.*Hadamard factors are 32x32 and 1x32"):
        swapper.plan(_file(trained_trial, TO_Q, broadcast))
    # A rank that differs between up and down.
    ranks = {"lora_down.weight": _r(3, 32), "lora_up.weight": _r(32, 2)}
    with pytest.raises(CheckpointError, match=f"{TO_Q}.*lora_down \\(3, 32\\).*lora_up \\(32, 2\\).*32x32"):
        swapper.plan(_file(trained_trial, TO_Q, ranks))
    # DoRA magnitudes for a layer of another width.
    dora = {"lora_down.weight": _r(2, 32), "lora_up.weight": _r(32, 2), "dora_scale": _r(48, 1).abs()}
    with pytest.raises(CheckpointError, match=f"{TO_Q}.*dora_scale \\(48, 1\\)"):
        swapper.plan(_file(trained_trial, TO_Q, dora))


def test_the_audits_file_is_refused_with_one_message_naming_module_and_both_shapes(swapper, trained_trial, tmp_path):
    state, meta = _real(trained_trial)
    assert tuple(state[f"{PROJ_IN}.lora_down.weight"].shape)[:2] == (4, 32), "the demo LoRA changed"
    state[f"{PROJ_IN}.lora_down.weight"], state[f"{PROJ_IN}.lora_up.weight"] = _r(2, 16), _r(64, 2)
    path = tmp_path / "lora-000009.safetensors"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as e:
        with swapper.applied(path):
            pass
    assert str(e.value) == (f"{PROJ_IN}: its LoRA makes a 64x16 weight change (lora_down (2, 16), lora_up (64, 2)), "
                            "but the layer's weight is 32x32x1x1 (out 32, in 32, kernel 1x1); nothing was applied: "
                            "was it trained for another model?")


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int32])
def test_integer_and_bool_weights_are_refused_naming_the_tensor_and_dtype(dtype, swapper, trained_trial, tmp_path):
    state, meta = _real(trained_trial)
    path = tmp_path / "cast.safetensors"
    save_file({k: v.to(dtype) for k, v in state.items()}, str(path), metadata=meta)
    before = _weights(swapper)
    with pytest.raises(CheckpointError) as e:
        with swapper.applied(path):
            pytest.fail(f"a {dtype} LoRA was applied")
    msg = str(e.value)
    name = str(dtype).removeprefix("torch.")
    first = min(k for k in state if not k.endswith(".alpha"))
    assert msg.startswith(f"{first} is {name} (and "), msg
    assert "floating point" in msg
    assert _same(before, swapper)
    # One weight tensor is enough to refuse the file.
    state[first] = state[first].to(dtype)
    with pytest.raises(CheckpointError, match=f"^{first} is {name}: "):
        parse_network(state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_and_integer_alpha_are_accepted(dtype, swapper, trained_trial, tmp_path):
    """sd-scripts saves fp16 or bf16; alpha is a float there, an integer in some converters: same merge."""
    state, meta = _real(trained_trial)
    assert all(float(v) == int(v) for k, v in state.items() if k.endswith(".alpha")), "alpha is not whole"
    floats = {k: (v if k.endswith(".alpha") else v.to(dtype)) for k, v in state.items()}
    ints = {k: (v.to(torch.int64) if k.endswith(".alpha") else v) for k, v in floats.items()}
    save_file(floats, str(tmp_path / "floats.safetensors"), metadata=meta)
    save_file(ints, str(tmp_path / "ints.safetensors"), metadata=meta)
    before = _weights(swapper)
    with swapper.applied(tmp_path / "floats.safetensors"):
        merged_floats = _weights(swapper)
    with swapper.applied(tmp_path / "ints.safetensors"):
        merged_ints = _weights(swapper)
    assert _same(before, swapper)
    assert not torch.equal(merged_floats[PROJ_IN], before[PROJ_IN])
    assert all(torch.equal(merged_floats[n], merged_ints[n]) for n in before)


def test_an_alpha_that_is_bool_or_not_one_number_is_refused(trained_trial):
    state, _ = _real(trained_trial)
    bad = dict(state, **{f"{PROJ_IN}.alpha": torch.tensor(True)})
    with pytest.raises(CheckpointError, match=f"^{PROJ_IN}.alpha is bool"):
        parse_network(bad)
    bad = dict(state, **{f"{PROJ_IN}.alpha": torch.ones(4)})
    with pytest.raises(CheckpointError, match=f"^{PROJ_IN}.alpha has 4 values"):
        parse_network(bad)


# ---------------------------------------------------------------- a file that goes away; a swap that fails


def test_a_missing_file_raises_file_not_found_unchanged(tmp_path, trained_trial, swapper):
    gone = tmp_path / "lora-000001.safetensors"
    with pytest.raises(FileNotFoundError):
        load_lora_file(gone)
    with pytest.raises(FileNotFoundError):
        with swapper.applied(gone):
            pass
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(CheckpointError, match="garbage.safetensors: cannot read LoRA tensors"):
        load_lora_file(tmp_path / "garbage.safetensors")


def test_a_failure_half_way_through_a_swap_or_in_its_body_restores_the_base(swapper, trained_trial, monkeypatch):
    path = trained_trial.checkpoint_path("lora")
    before = _weights(swapper)
    real_merged = lora_swap._merged
    calls = []

    def fails_on_the_sixth(name, adapter, module, scale):
        calls.append(name)
        if len(calls) == 6:
            raise CheckpointError(f"{name}: planted failure")
        return real_merged(name, adapter, module, scale)

    monkeypatch.setattr(lora_swap, "_merged", fails_on_the_sixth)
    with pytest.raises(CheckpointError, match="planted failure"):
        with swapper.applied(path):
            pytest.fail("the swap went on after a failure")
    assert len(calls) == 6 and _same(before, swapper), "five merged layers were not put back"
    monkeypatch.setattr(lora_swap, "_merged", real_merged)
    with pytest.raises(RuntimeError, match="generation failed"):
        with swapper.applied(path):
            assert not _same(before, swapper)
            raise RuntimeError("generation failed")
    assert _same(before, swapper)


# ---------------------------------------------------------------- the daemon: one error per bad file, it goes on


def test_the_daemon_records_each_bad_file_once_by_name_and_a_deleted_one_as_gone(
        tmp_path, trained_trial, monkeypatch, caplog):
    from evaluator import daemon as daemon_module
    from evaluator.daemon import Daemon, Options
    from evaluator.settings import Overrides
    from shared.jsonio import read_model
    from shared.records import EvaluationState, EvaluationSummary

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    state, meta = _real(trained_trial, "lora-000001")
    state[f"{PROJ_IN}.lora_down.weight"], state[f"{PROJ_IN}.lora_up.weight"] = _r(2, 16), _r(64, 2)
    save_file(state, str(t.checkpoint_path("lora-000001")), metadata=meta)
    state, meta = _real(trained_trial, "lora-000002")
    save_file({k: v.to(torch.int8) for k, v in state.items()}, str(t.checkpoint_path("lora-000002")), metadata=meta)
    real_score = daemon_module.score

    def deleted_while_scored(models, ctx, name, *args, **kw):
        if name == "lora":
            t.checkpoint_path("lora").unlink()
        return real_score(models, ctx, name, *args, **kw)

    monkeypatch.setattr(daemon_module, "score", deleted_while_scored)
    caplog.set_level(logging.INFO, logger="epochscope")
    Daemon(t.root, Options(device="cpu", once=True, overrides=Overrides(num_samples=2, steps=2))).run()
    entries = {e.name: e for e in read_model(t.evaluation_state_path, EvaluationState).entries.values()}
    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert entries["baseline"].status == "done"
    shape_error = entries["lora-000001"].error or ""
    assert entries["lora-000001"].status == "failed", "a LoRA whose shapes do not fit was scored"
    assert shape_error.startswith("lora-000001.safetensors: ") and PROJ_IN in shape_error
    assert "64x16" in shape_error and "32x32x1x1" in shape_error
    assert entries["lora-000002"].status == "failed", "an int8 LoRA was scored"
    assert "lora-000002.safetensors: " in entries["lora-000002"].error and " is int8" in entries["lora-000002"].error
    assert set(summary.failed) == {"lora-000001", "lora-000002"}, "the deleted file was recorded as a failure"
    assert not {"lora-000001", "lora-000002", "lora"} & set(summary.checkpoints)
    assert "disappeared while being scored" in caplog.text


# ---------------------------------------------------------------- a diverged file: NaN weights


def _diverged(trained_trial, name: str, path) -> str:
    """A real checkpoint with one NaN planted in one tensor (a run that diverged); returns that tensor's name."""
    state, meta = _real(trained_trial, name)
    key = sorted(k for k in state if k.endswith("lora_up.weight"))[0]
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(path), metadata=meta)
    return key


def test_a_file_holding_nan_is_planned_but_not_merged(swapper, trained_trial, tmp_path):
    path = tmp_path / "diverged.safetensors"
    key = _diverged(trained_trial, "lora", path)
    before = _weights(swapper)
    with swapper.applied(path) as layers:
        assert layers == 0 and _same(before, swapper), "nothing merged: every sample would be NaN"
        assert swapper.last_nonfinite.values == 1 and swapper.last_nonfinite.tensors == (key,)
    with swapper.applied(trained_trial.checkpoint_path("lora")) as layers:  # the next file merges as ever
        assert layers > 0 and not swapper.last_nonfinite and not _same(before, swapper)
    assert _same(before, swapper)
    with pytest.raises(CheckpointError, match="match no layer"):  # a file that does not fit is still refused
        swapper.plan({f"lora_unet_nowhere.{k}": v for k, v in load_file(str(path)).items()})


def test_the_daemon_records_a_diverged_checkpoint_failed_without_generating_it(tmp_path, trained_trial, monkeypatch):
    from evaluator import scoring
    from evaluator.daemon import Daemon, Options
    from evaluator.settings import Overrides
    from shared.jsonio import read_model
    from shared.records import CheckpointMetrics, EvaluationSummary

    t = copy_trial(trained_trial, tmp_path / "trial_0001")
    key = _diverged(trained_trial, "lora-000002", t.checkpoint_path("lora-000002"))
    generated = []
    real_generate = scoring.generate
    monkeypatch.setattr(scoring, "generate", lambda pipe, gen: generated.append(1) or real_generate(pipe, gen))
    Daemon(t.root, Options(device="cpu", once=True, overrides=Overrides(num_samples=2, steps=2))).run()

    summary = read_model(t.evaluation_summary_path, EvaluationSummary)
    assert set(summary.checkpoints) == {"lora-000001", "lora-000002", "lora"} and not summary.failed
    assert len(generated) == 3, "the baseline, lora-000001 and lora; not the diverged file"
    def result(name: str) -> CheckpointMetrics:
        row = summary.checkpoints[name]
        return read_model(t.results_dir(row.results_dir, name) / "metrics.json", CheckpointMetrics)

    diverged = result("lora-000002")
    assert [s.failed for s in diverged.samples] == ["nan", "nan"] and diverged.metrics.failure_rate == 1.0
    assert any(n.startswith("training diverged: lora-000002.safetensors holds 1 NaN or infinite values of ")
               and f"(in {key})" in n for n in diverged.notes), diverged.notes
    for name in ("lora-000001", "lora"):
        other = result(name)
        assert other.metrics.failure_rate == 0.0 and not any("diverged" in n for n in other.notes), name
