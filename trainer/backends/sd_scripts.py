"""The sd-scripts backend: kohya-ss train_network.py (SD 1.x) or sdxl_train_network.py (SDXL) in its own
checkout and Python environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from shared.config import RunConfig
from shared.errors import EpochscopeError
from shared.safetensors_info import inspect
from shared.trial import Trial
from trainer.backends.base import Event, LaunchSpec, ResumePoint
from trainer.sd_scripts import command, continuation, output
from trainer.sd_scripts.tensorboard_lr import LrReader

HOW_TO = ("point training.sd_scripts_dir at a kohya-ss/sd-scripts checkout and training.sd_scripts_python at "
          "the Python of its own venv (or set $SD_SCRIPTS_DIR / $SD_SCRIPTS_PYTHON); see docs/sd-scripts.md")


class SdScriptsBackend:
    name = "sd-scripts"
    graceful_sigint = False
    step_counter_restarts_on_resume = True

    def __init__(self) -> None:
        self._resume: ResumePoint | None = None
        self._output_name = "lora"
        self._schedule_steps: int | None = None
        self._lr: LrReader | None = None

    def check(self, config: RunConfig) -> None:
        t = config.training
        folder, python = t.resolved_sd_scripts_dir(), t.resolved_sd_scripts_python()
        if not folder or not python:
            raise EpochscopeError(f"the sd-scripts backend needs a checkout and its Python: {HOW_TO}")
        script = command.script_name(config)
        if not (Path(folder) / script).is_file():
            raise EpochscopeError(f"training.sd_scripts_dir {folder} has no {script}: {HOW_TO}")
        try:
            out = subprocess.run([python, "-c", "import sys, torch; print(sys.version.split()[0], torch.__version__)"],
                                 capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EpochscopeError(f"training.sd_scripts_python {python} does not run ({e}): {HOW_TO}") from None
        if out.returncode != 0:
            raise EpochscopeError(f"training.sd_scripts_python {python} cannot import torch: "
                                  f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        if config.model.base.startswith("demo:"):
            raise EpochscopeError(f"model.base {config.model.base!r} cannot be trained by sd-scripts (it hard-codes "
                                  "SD 1.5 and SDXL shapes); use a real checkpoint or diffusers folder, or "
                                  "training.backend = 'builtin'")
        if not Path(config.model.base).exists():
            raise EpochscopeError(f"model.base {config.model.base} not found")
        if not config.dataset.dataset_config and not (config.dataset.train_dir and Path(config.dataset.train_dir).is_dir()):
            raise EpochscopeError(f"dataset.train_dir {config.dataset.train_dir} does not exist")

    def build_launch(self, config: RunConfig, trial: Trial, resume: ResumePoint | None,
                     target_steps: int | None, target_epochs: int | None = None) -> LaunchSpec:
        t = config.training
        self._resume, self._output_name = resume, config.output.name
        spe = continuation.steps_per_epoch_of(trial, config.output.name) if resume is not None else None
        steps, epochs = self._run_length(config, resume, target_steps, target_epochs, spe)
        out_dir = trial.root
        self._schedule_steps = None
        if resume is not None:
            out_dir = continuation.staging_dir(trial)
            if out_dir.is_dir() and any(out_dir.iterdir()):
                # A continuation killed before its files were collected: keep them (their step numbers are
                # relative to a resume point this run no longer knows), never delete them.
                kept = continuation.move_aside(trial, out_dir)
                print(f"kept the uncollected files of an interrupted continuation in {kept}", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            self._schedule_steps = continuation.schedule_length(trial, config.output.name, resume, steps, epochs)
        self._lr = LrReader(trial.logs_dir / "sd-scripts", since=time.time())
        args = command.script_args(config, out_dir, trial.logs_dir / "sd-scripts",
                                   resume.state_dir if resume else None, steps, epochs, self._schedule_steps)
        python = t.resolved_sd_scripts_python() or command.PLACEHOLDER_PYTHON
        folder = t.resolved_sd_scripts_dir() or command.PLACEHOLDER_DIR
        env = {"PYTHONUNBUFFERED": "1"}
        if t.tokenizer_cache_dir:
            env["HF_HUB_OFFLINE"] = "1"
        return LaunchSpec(command.launcher(config, python, folder) + args, env=env,
                          cwd=Path(folder) if Path(folder).is_dir() else None)

    @staticmethod
    def _run_length(config: RunConfig, resume: ResumePoint | None, target_steps: int | None,
                    target_epochs: int | None, steps_per_epoch: int | None = None) -> tuple[int | None, int | None]:
        """Steps or epochs for this process to run (relative when resuming: sd-scripts counts from 0).
        A continuation to an epoch target runs the steps to that epoch's end when the steps per epoch
        are known: from a mid-epoch state, whole epochs would overshoot it."""
        t = config.training
        step0, epoch0 = (resume.step, resume.epoch) if resume else (0, 0)
        if target_steps is None and target_epochs is None:
            target_steps, target_epochs = t.max_train_steps, (None if t.max_train_steps else t.max_train_epochs)
        if target_steps is None and resume is not None and steps_per_epoch:
            target_steps = int(target_epochs) * steps_per_epoch
        if target_steps is not None:
            steps = target_steps - step0
            if steps < 1:
                raise EpochscopeError(f"already at step {step0}: nothing to train (pass --steps N for N more)")
            return steps, None
        epochs = int(target_epochs) - epoch0
        if epochs < 1:
            raise EpochscopeError(f"already at epoch {epoch0}: nothing to train (pass --epochs N for N more)")
        return None, epochs

    def find_resume_point(self, config: RunConfig, trial: Trial) -> ResumePoint | None:
        """The newest complete state: sd-scripts writes random_states_0.pkl last (we never unpickle it)."""
        best = None
        for name, folder in trial.state_dirs(config.output.name):
            if not (folder / continuation.STATE_DONE_MARKER).exists():
                continue
            schedule = None
            try:
                data = json.loads((folder / "train_state.json").read_text())
                step, epoch = int(data["current_step"]), int(data["current_epoch"])
                schedule = data.get(continuation.SCHEDULE_KEY)
            except (OSError, ValueError, KeyError):
                step, epoch = name.step or 0, name.epoch or 0
            if schedule is None:  # a first run's state: its checkpoint says how long its schedule was
                schedule = inspect(trial.checkpoint_path(name.stem)).metadata_int("ss_max_train_steps")
            if best is None or step > best.step:
                best = ResumePoint(folder, step, epoch, int(schedule) if schedule else None)
        return best

    def parse_line(self, line: str) -> list[Event]:
        return output.parse_line(line)

    def current_lr(self) -> float | None:
        return self._lr.poll() if self._lr is not None else None

    def collect_outputs(self, trial: Trial) -> list[Path]:
        """Called by the supervisor as it runs: adopt a continuation's finished files."""
        if self._resume is None:
            return []
        return continuation.adopt_outputs(trial, self._output_name, self._resume.step, self._resume.epoch,
                                          self._schedule_steps)

    def finish(self, trial: Trial) -> None:
        """Called by the supervisor at the end: an emptied staging folder goes."""
        if self._resume is not None:
            continuation.remove_if_empty(continuation.staging_dir(trial))

    def versions(self, config: RunConfig) -> dict[str, str]:
        """sd-scripts' commit and the packages of *its* Python (they train; ours do not)."""
        from trainer.provenance import git_commit, venv_versions

        folder = config.training.resolved_sd_scripts_dir()
        python = config.training.resolved_sd_scripts_python()
        out = venv_versions(python) if python else {}
        commit = git_commit(folder, root=True) if folder else None
        if commit:
            out["sd_scripts_commit"] = commit
        return out
