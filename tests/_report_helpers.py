"""Trial folders written through the shared models, for report tests that need no training.

The files are what the trainer and evaluator write (same models, same paths, real PNGs); only the metric
values are chosen by the test, so the page's ordering, highlighting and escaping have a known answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shared.config import load_config
from shared.jsonio import write_model
from shared.records import (BestCheckpoint, CheckpointMetrics, EvaluationSummary, Metrics, Params, Sample,
                            StopRequest, SummaryEntry, SweepInfo, TrainerStatus)
from shared.trial import BASELINE, Trial, sample_filename

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a red circle on a blue background, sks style", "a yellow square on a green background, sks style")


def write_params(trial: Trial, prompts=PROMPTS, sweep_params: dict | None = None) -> Params:
    """params.json from the repo's demo config with the given prompts (and a sweep's sampled values)."""
    config = load_config(REPO_ROOT / "configs" / "demo.toml")
    config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"prompts": list(prompts)})})
    sweep = SweepInfo(study_name="s", storage="sqlite:///x.db", trial_number=int(trial.name.split("_")[-1]),
                      params=sweep_params) if sweep_params is not None else None
    params = Params(trial_name=trial.name, backend="builtin", config=config, sweep=sweep)
    trial.root.mkdir(parents=True, exist_ok=True)
    write_model(trial.params_path, params)
    return params


def write_status(trial: Trial, state: str, epoch: int = 3, message: str = "", stop_reason: str | None = None) -> None:
    """trainer_status.json, plus the stop_request.json that led to a ``stopped_early`` state."""
    trial.root.mkdir(parents=True, exist_ok=True)
    write_model(trial.status_path, TrainerStatus(state=state, epoch=epoch, total_epochs=4, step=4 * epoch,
                                                 total_steps=16, message=message))
    if stop_reason:
        write_model(trial.stop_request_path, StopRequest(reason=stop_reason, requested_by="test"))


def write_evaluation(trial: Trial, name: str, score: float, epoch: int | None, prompts=PROMPTS,
                     samples_per_prompt: int = 2, colour: tuple[int, int, int] = (200, 40, 40),
                     failures: dict[int, str] | None = None, copies: dict[int, str] | None = None,
                     num_references: int = 4, notes: list[str] | None = None,
                     metrics: Metrics | None = None) -> SummaryEntry:
    """One scored checkpoint (or the baseline): real 32 px PNG samples and metrics.json.

    ``failures`` / ``copies`` mark samples by index as failed (with the reason) or as copies of a named
    image; ``metrics`` replaces the values derived from ``score``."""
    folder = trial.baseline_dir if name == BASELINE else trial.checkpoint_eval_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(len(prompts) * samples_per_prompt):
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[:] = colour
        pixels[8:24, 8 + i % 8:24] = 255
        Image.fromarray(pixels).save(folder / sample_filename(i))
        samples.append(Sample(file=sample_filename(i), prompt=prompts[i % len(prompts)], seed=1000 + i,
                              failed=(failures or {}).get(i), copy_of=(copies or {}).get(i)))
    metrics = metrics or Metrics(score=score, clip_t=0.3 + score / 10, clip_i=0.8, color_swd_lab=20 - score,
                                 ssim_prev=0.9, diversity=0.1, failure_rate=0.0)
    step = None if epoch is None else 4 * epoch
    write_model(folder / "metrics.json", CheckpointMetrics(
        checkpoint=name, epoch=epoch, step=step, metrics=metrics, samples=samples, encoder="demo:tiny-clip",
        num_samples=len(samples), num_references=num_references, notes=notes or [],
        generation={"steps": 25, "guidance_scale": 7.5}))
    return SummaryEntry(checkpoint=name, epoch=epoch, step=step, metrics=metrics)


def write_scored_trial(trial: Trial, scores: dict[str, float], prompts=PROMPTS, state: str = "finished",
                       stop_reason: str | None = None, sweep_params: dict | None = None) -> EvaluationSummary:
    """A whole trial: params, status, a baseline and ``scores`` = {checkpoint stem: score} in epoch order."""
    write_params(trial, prompts, sweep_params)
    write_status(trial, state, epoch=len(scores), stop_reason=stop_reason)
    baseline = write_evaluation(trial, BASELINE, 0.5, None, prompts, colour=(90, 90, 90))
    entries = {name: write_evaluation(trial, name, score, epoch, prompts)
               for epoch, (name, score) in enumerate(scores.items(), start=1)}
    best_name = max(scores, key=scores.get) if scores else None
    best = BestCheckpoint(checkpoint=best_name, score=scores[best_name], epoch=entries[best_name].epoch,
                          rule="highest score") if best_name else None
    summary = EvaluationSummary(trial_name=trial.name, checkpoints=entries, baseline=baseline, best=best,
                                total_checkpoints_evaluated=len(entries))
    write_model(trial.evaluation_summary_path, summary)
    return summary
