"""The built-in backend: our diffusers + peft worker (trainer/builtin/worker.py) as a child process."""

from __future__ import annotations

import sys
from pathlib import Path

from shared.config import RunConfig
from shared.demo_assets import resolve_demo
from shared.errors import EpochscopeError
from shared.trial import Trial
from trainer.backends.base import (
    BackendError,
    CheckpointSaved,
    EpochStarted,
    Event,
    LaunchSpec,
    Progress,
    ResumePoint,
    Totals,
)
from trainer.builtin import events
from trainer.builtin.dataset import load_image, scan
from trainer.builtin.state import read_counters


class BuiltinBackend:
    name = "builtin"
    graceful_sigint = True
    step_counter_restarts_on_resume = False

    def check(self, config: RunConfig) -> None:
        base = config.model.base
        path = Path(resolve_demo(base))
        if not path.exists():
            raise EpochscopeError(f"model.base {base!r} not found: give a diffusers folder, a single-file "
                                  ".safetensors checkpoint, or 'demo:tiny' / 'demo:tiny-sdxl'")
        if config.dataset.train_dir is None:
            raise EpochscopeError("dataset.train_dir is required for the builtin backend")
        items = scan(resolve_demo(config.dataset.train_dir), config.dataset.caption_extension,
                     config.dataset.repeats_override)
        for item in items:  # fail now, not after the model has loaded
            load_image(item.image, 8)

    def build_launch(self, config: RunConfig, trial: Trial, resume: ResumePoint | None,
                     target_steps: int | None, target_epochs: int | None = None) -> LaunchSpec:
        argv = [sys.executable, "-m", "trainer.builtin.worker", "--params", str(trial.params_path)]
        if resume is not None:
            argv += ["--resume", str(resume.state_dir)]
        if target_steps is not None:
            argv += ["--target-steps", str(target_steps)]
        if target_epochs is not None:
            argv += ["--target-epochs", str(target_epochs)]
        return LaunchSpec(argv, env={"PYTHONUNBUFFERED": "1"})

    def find_resume_point(self, config: RunConfig, trial: Trial) -> ResumePoint | None:
        best: ResumePoint | None = None
        for _, state_dir in trial.state_dirs(config.output.name):
            counters = read_counters(state_dir)
            if counters is not None and (best is None or counters.step > best.step):
                best = ResumePoint(state_dir, counters.step, counters.epoch)
        return best

    def current_lr(self) -> float | None:
        return None  # every progress line carries it

    def parse_line(self, line: str) -> list[Event]:
        data = events.decode(line)
        if data is None:
            return []
        kind = data["event"]
        if kind == "progress":
            return [Progress(step=int(data["step"]), total_steps=data.get("total_steps"), loss=data.get("loss"),
                             avg_loss=data.get("avg_loss"), lr=data.get("lr"))]
        if kind == "epoch":
            return [EpochStarted(int(data["epoch"]), data.get("total_epochs"))]
        if kind == "checkpoint":
            return [CheckpointSaved(Path(data["path"]))]
        if kind == "totals":
            return [Totals(data.get("total_steps"), data.get("total_epochs"))]
        if kind == "error":
            return [BackendError(str(data.get("message", "unknown error")))]
        return []

    def versions(self, config: RunConfig) -> dict[str, str]:
        return {}
