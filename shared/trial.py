"""The trial-folder layout: the only module that knows where each file lives.

    trial_0001/
      params.json  trainer_status.json  training.log  stop_request.json  logs/
      <name>-000002.safetensors  <name>-step00000500.safetensors  <name>.safetensors  <stem>-state/
      realtime_evaluations/{evaluation_state.json, evaluation_summary.json, report.html,
                            baseline/, <stem>/metrics.json, <stem>/sample_00.png ...}

A sweep root holds trial_0001/, trial_0002/, ..., study.db and index.html.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shared import naming
from shared.safetensors_info import SafetensorsInfo, inspect

TRIAL_DIR_RE = re.compile(r"^trial_(\d{4,})$")
BASELINE = "baseline"


def trial_dirname(number: int) -> str:
    return f"trial_{number:04d}"


def version_dirname(stem: str, fingerprint_short: str | None) -> str:
    return f"{stem}@{fingerprint_short}" if fingerprint_short else stem


def sample_filename(index: int) -> str:
    return f"sample_{index:02d}.png"


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint on disk with what its name and (if readable) its metadata say."""

    path: Path
    name: naming.CheckpointName
    info: SafetensorsInfo

    @property
    def stem(self) -> str:
        return self.path.name[: -len(naming.CHECKPOINT_SUFFIX)]

    @property
    def epoch(self) -> int | None:
        """``ss_epoch`` metadata when present, else the name's epoch (sd-scripts' or OneTrainer's names)."""
        return self.info.metadata_int("ss_epoch") or self.name.epoch or self._onetrainer(1)

    @property
    def step(self) -> int | None:
        return self.info.metadata_int("ss_steps") or self.name.step or self._onetrainer(0)

    def _onetrainer(self, index: int) -> int | None:
        progress = naming.onetrainer_progress(self.path.name)
        return progress[index] if progress else None

    def sort_key(self) -> tuple[float, float, int, str]:
        inf = float("inf")
        final = 1 if self.name.kind == "final" else 0
        return (self.step if self.step is not None else inf, self.epoch if self.epoch is not None else inf,
                final, self.stem)


class Trial:
    """Paths of one trial folder. Cheap to construct; touches the disk only in methods that list."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Trial({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    # trainer files
    @property
    def params_path(self) -> Path:
        return self.root / "params.json"

    @property
    def status_path(self) -> Path:
        return self.root / "trainer_status.json"

    @property
    def log_path(self) -> Path:
        return self.root / "training.log"

    @property
    def logs_dir(self) -> Path:
        """TensorBoard event files of both processes."""
        return self.root / "logs"

    @property
    def stop_request_path(self) -> Path:
        return self.root / "stop_request.json"

    @property
    def backup_dir(self) -> Path:
        """Where ``--new`` moves a previous final LoRA instead of overwriting it."""
        return self.root / "backup"

    def checkpoint_path(self, stem: str) -> Path:
        return self.root / (stem + naming.CHECKPOINT_SUFFIX)

    def state_dir(self, stem: str) -> Path:
        return self.root / naming.state_dirname(stem)

    # evaluator files
    @property
    def evaluations_dir(self) -> Path:
        return self.root / "realtime_evaluations"

    @property
    def evaluation_state_path(self) -> Path:
        return self.evaluations_dir / "evaluation_state.json"

    @property
    def evaluation_summary_path(self) -> Path:
        return self.evaluations_dir / "evaluation_summary.json"

    @property
    def report_path(self) -> Path:
        return self.evaluations_dir / "report.html"

    @property
    def evaluator_lock_path(self) -> Path:
        return self.evaluations_dir / ".evaluator.lock"

    @property
    def evaluator_log_path(self) -> Path:
        return self.evaluations_dir / "evaluator.log"

    @property
    def baseline_dir(self) -> Path:
        return self.evaluations_dir / BASELINE

    def checkpoint_eval_dir(self, stem: str, fingerprint_short: str | None = None) -> Path:
        """One version's results: ``<stem>@<sha256 prefix>``, so a file rewritten under the same name
        keeps every scored version (``<stem>`` alone for a version without a fingerprint)."""
        return self.evaluations_dir / (version_dirname(stem, fingerprint_short))

    def results_dir(self, entry_results_dir: str | None, stem: str) -> Path:
        """Where a summary row's metrics.json and samples are (rows written before per-version folders
        have no results_dir and live under the stem)."""
        return self.evaluations_dir / (entry_results_dir or stem)

    # listings
    def checkpoint_paths(self) -> list[Path]:
        """Every ``*.safetensors`` directly in the folder (complete or not). Temp files are skipped."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*" + naming.CHECKPOINT_SUFFIX)
                      if p.is_file() and not p.name.startswith("."))

    def checkpoints(self, output_name: str | None = None, complete_only: bool = True) -> list[CheckpointFile]:
        """Checkpoints in training order. ``output_name`` keeps only that run's files."""
        found: list[CheckpointFile] = []
        for path in self.checkpoint_paths():
            try:
                parsed = naming.parse_stem(path.name, output_name)
            except ValueError:
                continue
            info = inspect(path)
            if complete_only and not info.is_complete:
                continue
            found.append(CheckpointFile(path, parsed, info))
        return sorted(found, key=CheckpointFile.sort_key)

    def state_dirs(self, output_name: str | None = None) -> list[tuple[naming.CheckpointName, Path]]:
        """``-state`` folders with the checkpoint each belongs to (not checked for completeness)."""
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir():
                parsed = naming.parse_state_dirname(p.name, output_name)
                if parsed is not None:
                    out.append((parsed, p))
        return out


class SweepRoot:
    """A folder of trials plus the study storage."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def study_db_path(self) -> Path:
        return self.root / "study.db"

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{self.study_db_path.resolve()}"

    @property
    def index_path(self) -> Path:
        return self.root / "index.html"

    def trial(self, number: int) -> Trial:
        return Trial(self.root / trial_dirname(number))

    def trials(self) -> list[Trial]:
        if not self.root.is_dir():
            return []
        return [Trial(p) for p in sorted(self.root.iterdir()) if p.is_dir() and TRIAL_DIR_RE.match(p.name)]


def is_trial_dir(path: Path | str) -> bool:
    """A folder is a trial if the trainer wrote params.json there or it holds checkpoints."""
    path = Path(path)
    return (path / "params.json").exists() or any(path.glob("*" + naming.CHECKPOINT_SUFFIX))
