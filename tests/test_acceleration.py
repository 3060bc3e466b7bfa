"""evaluation.compile on the CPU with the demo model: the UNet is compiled once, swapping LoRAs (merged into
the weights in place) compiles nothing more, and each LoRA still changes the output. Takes about a minute
(inductor compiles the UNet's C++ kernels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_swapping_two_loras_leaves_the_compiled_graphs_unchanged_and_changes_the_output(trained_trial):
    from evaluator.acceleration import accelerate, compile_stats
    from evaluator.lora_swap import LoraSwapper
    from evaluator.pipeline import GenerationSettings, generate, load_pipeline, set_scheduler

    gen = GenerationSettings.uniform(["a red circle on a blue background, sks style"] * 2, [1, 2], "", 3, 5.0, 64)
    pipe = load_pipeline("demo:tiny", "cpu", torch.float32)
    set_scheduler(pipe, "ddim")
    eager = generate(pipe, gen)[0]
    acc = accelerate(pipe, "cpu", compile=True)
    assert acc.compiled and not acc.channels_last  # channels_last is for CUDA only
    swapper = LoraSwapper(pipe.unet, pipe.text_encoder)
    before = compile_stats()
    base = generate(pipe, gen)[0]  # the baseline compiles the UNet
    warm = compile_stats()
    assert warm.graphs > before.graphs, "nothing was compiled"
    for a, b in zip(base, eager):
        np.testing.assert_allclose(a, b, atol=1e-4)  # compiled = eager, within float tolerance
    outputs = []
    for name in ("lora-000001", "lora"):
        with swapper.applied(trained_trial.checkpoint_path(name)):
            outputs.append(generate(pipe, gen)[0])
        after = compile_stats()
        print(f"after {name}: {after}")
        assert (after.graphs, after.recompiles) == (warm.graphs, warm.recompiles), f"{name} recompiled the UNet"
    first, last = (np.stack(o) for o in outputs)
    assert np.abs(first - np.stack(base)).max() > 1e-3, "the first LoRA did not change the output"
    assert np.abs(last - first).max() > 1e-3, "the second LoRA gave the first one's output"
    restored = generate(pipe, gen)[0]
    assert all(np.array_equal(a, b) for a, b in zip(restored, base)), "the base weights were not restored"
    assert compile_stats() == warm
