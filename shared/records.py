"""Pydantic models for every JSON file in a trial folder. Each says who writes it and what it means.

Readers go through ``shared.jsonio.read_model``; writers through ``shared.jsonio.write_model``.
Bump a model's ``schema_version`` default when a change would mislead an older reader.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.config import RunConfig


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Record(BaseModel):
    # Readers tolerate fields added by newer writers of the same schema_version.
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- trainer -> evaluator, people


class SweepInfo(_Record):
    """Set in params.json when the trial belongs to an Optuna sweep."""

    study_name: str
    storage: str
    trial_number: int
    params: dict[str, Any] = Field(default_factory=dict, description="Sampled values, dotted config keys.")


class RunRecord(_Record):
    """One ``trainer run`` on a trial, as params.json's history keeps it."""

    run_id: str
    mode: Literal["new", "continue"] = "new"
    started_at: datetime = Field(default_factory=utcnow)
    resumed_from: str | None = Field(None, description="The state folder a continuation started from.")
    resumed_at_step: int | None = None
    target_steps: int | None = None
    target_epochs: int | None = None
    command: list[str] | None = Field(None, description="The backend command (sd-scripts).")


class Params(_Record):
    """``params.json``, written by the trainer first, before any checkpoint exists.

    The evaluator takes the base model, prompts and references from ``config``.
    """

    schema_version: int = 1
    trial_name: str
    backend: str
    config: RunConfig = Field(description="The resolved config (absolute paths).")
    command: list[str] | None = Field(None, description="The exact backend command (sd-scripts).")
    versions: dict[str, str] = Field(default_factory=dict, description="Package versions.")
    git_commit: str | None = Field(None, description="This project's commit, if run from a checkout.")
    sd_scripts_commit: str | None = None
    sweep: SweepInfo | None = None
    created_at: datetime = Field(default_factory=utcnow)
    history: list[RunRecord] = Field(default_factory=list, description="Every `trainer run` on this trial "
                                     "since its --new, oldest first (a --continue adds one, never replaces).")


TrainerState = Literal["starting", "running", "finished", "failed", "stopped", "stopped_early"]
FINAL_TRAINER_STATES: frozenset[str] = frozenset({"finished", "failed", "stopped", "stopped_early"})
#: How the message of a ``failed`` run begins when it stopped because training diverged (NaN or infinite
#: losses, gradients or saved weights): a sweep records such a trial PRUNED, a result, not a failure.
DIVERGED = "training diverged: "


class TrainerStatus(_Record):
    """``trainer_status.json``, rewritten by the trainer at least every 5 s (heartbeat) and on change."""

    schema_version: int = 1
    state: TrainerState = "starting"
    backend: str = "builtin"
    pid: int | None = Field(None, description="The trainer (supervisor) process.")
    host: str | None = Field(None, description="The machine the trainer runs on (its pid means something "
                             "only there).")
    run_id: str | None = Field(None, description="One id per `trainer run`: $EPOCHSCOPE_RUN_ID when the caller "
                               "sets it (run_pair.sh), else random. Lets a reader wait for this run, not the last.")
    pgid: int | None = Field(None, description="Process group of the training work (the supervisor "
                             "pauses it on a pause_request.json lease, see shared/pause.py).")
    gpus: str | None = Field(None, description="The GPUs training uses: its CUDA_VISIBLE_DEVICES, 'all' "
                             "when unset, 'cpu' for CPU training; None if unknown.")
    paused: bool = Field(False, description="True while the supervisor holds training paused for the evaluator.")
    epoch: int = 0
    total_epochs: int | None = None
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    avg_loss: float | None = None
    lr: float | None = None
    eta_seconds: float | None = None
    steps_per_second: float | None = None
    last_checkpoint: str | None = Field(None, description="File name of the newest complete checkpoint.")
    exit_code: int | None = None
    message: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, description="Heartbeat.")

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_TRAINER_STATES


class StopRequest(_Record):
    """``stop_request.json``: anyone (evaluator, sweep, user) asks the trainer to save and stop."""

    schema_version: int = 1
    reason: str = Field(description="early_stop | pruned | user | ...")
    requested_by: str = "user"
    best_checkpoint: str | None = None
    detail: str = ""
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------- evaluator outputs


class Fingerprint(_Record):
    """Identifies one version of a checkpoint file: a rewrite under the same name is a new version."""

    size: int
    mtime_ns: int
    sha256: str

    @property
    def short(self) -> str:
        return self.sha256[:12]


EvalStatus = Literal["pending", "running", "done", "failed"]


class EvalEntry(_Record):
    """One checkpoint version in ``evaluation_state.json``."""

    name: str = Field(description="Checkpoint stem, e.g. lora-000002; 'baseline' for the base model.")
    file: str | None = Field(None, description="File name in the trial folder (None for the baseline).")
    fingerprint: Fingerprint | None = None
    status: EvalStatus = "pending"
    attempts: int = 0
    error: str | None = None
    first_seen_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None

    @property
    def key(self) -> str:
        return entry_key(self.name, self.fingerprint)


def entry_key(name: str, fingerprint: Fingerprint | None) -> str:
    return f"{name}@{fingerprint.short}" if fingerprint else name


class EvaluationState(_Record):
    """``realtime_evaluations/evaluation_state.json``, the evaluator's exactly-once ledger."""

    schema_version: int = 1
    entries: dict[str, EvalEntry] = Field(default_factory=dict, description="By entry key name@hash.")
    updated_at: datetime = Field(default_factory=utcnow)


class Metrics(_Record):
    """Every metric, documented. ``None`` means not computable (e.g. no reference images)."""

    score: float | None = Field(None, description="Composite used to pick the best checkpoint; see "
                                "evaluator docs for the formula. Higher is better.")
    clip_t: float | None = Field(None, description="Mean cosine(image, its prompt) in CLIP space.")
    clip_i: float | None = Field(None, description="Mean cosine(sample, reference) over all pairs.")
    ref_self_sim: float | None = Field(None, description="Mean pairwise cosine among the references.")
    diversity: float | None = Field(None, description="1 - mean pairwise cosine among samples.")
    max_ref_sim: float | None = Field(None, description="Highest cosine of any sample to any reference "
                                      "(memorisation).")
    max_train_sim: float | None = Field(None, description="Highest cosine of any sample to any training image "
                                        "(memorisation).")
    copy_rate: float | None = Field(None, description="Share of samples that are pixel near-copies of a "
                                    "training image or reference; each counts as lost in the score.")
    dino: float | None = Field(None, description="Mean cosine(sample, reference) in DINO space (subject "
                               "identity); None when evaluation.dino_model is off.")
    dino_train: float | None = Field(None, description="Mean cosine(sample, training image) in DINO space.")
    cmmd: float | None = Field(None, description="CMMD: MMD^2 on CLIP embeddings (paper's estimator, >= 0), "
                               "RBF sigma=10, x1000.")
    color_swd_lab: float | None = Field(None, description="Sliced Wasserstein distance of Lab pixels "
                                        "to the references (fixed projections).")
    color_delta_e2000_mean: float | None = Field(None, description="CIEDE2000 between mean Lab colours.")
    brightness: float | None = None
    contrast_rms: float | None = None
    saturation: float | None = None
    clipped_fraction: float | None = None
    brightness_delta_ref: float | None = None
    contrast_rms_delta_ref: float | None = None
    saturation_delta_ref: float | None = None
    clipped_fraction_delta_ref: float | None = None
    brightness_delta_base: float | None = None
    contrast_rms_delta_base: float | None = None
    saturation_delta_base: float | None = None
    clipped_fraction_delta_base: float | None = None
    ssim_prev: float | None = Field(None, description="SSIM against the previous checkpoint, same seeds.")
    ssim_base: float | None = Field(None, description="SSIM against the baseline, same seeds.")
    failure_rate: float | None = Field(None, description="Share of failed samples: NaN, black, flat, "
                                       "near-constant, pure noise or NSFW-filtered.")


class Sample(_Record):
    file: str
    prompt: str
    seed: int
    failed: str | None = Field(None, description="Why the sample counts as a failure, if it does.")
    copy_of: str | None = Field(None, description="The training image or reference this sample nearly copies.")


class CheckpointMetrics(_Record):
    """``realtime_evaluations/<ckpt>/metrics.json`` (and ``baseline/metrics.json``)."""

    schema_version: int = 1
    checkpoint: str
    file: str | None = None
    fingerprint: Fingerprint | None = None
    epoch: int | None = None
    step: int | None = None
    metrics: Metrics
    samples: list[Sample] = Field(default_factory=list)
    encoder: str = Field(description="CLIP model used, e.g. 'ViT-B-32/laion2b_s34b_b79k'.")
    num_samples: int
    num_references: int = 0
    num_training_images: int = Field(0, description="Training images memorisation was checked against.")
    notes: list[str] = Field(default_factory=list, description="Weak-evidence notes (no references, references "
                             "that overlap the training images), as evaluator.metrics.evidence.result_notes.")
    generation: dict[str, Any] = Field(default_factory=dict, description="steps, guidance, scheduler, "
                                       "resolution, seeds, dtype (the pipeline's), clip_dtype, device.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    created_at: datetime = Field(default_factory=utcnow)


class SummaryEntry(_Record):
    checkpoint: str
    file: str | None = None
    fingerprint: str | None = Field(None, description="sha256 prefix of the scored version.")
    epoch: int | None = None
    step: int | None = None
    metrics: Metrics
    results_dir: str | None = Field(None, description="Folder under realtime_evaluations/ holding this version's "
                                    "metrics.json and samples (``<stem>@<sha256 prefix>``; older summaries: the stem).")
    evaluated_at: datetime = Field(default_factory=utcnow)


class BestCheckpoint(_Record):
    checkpoint: str
    score: float
    epoch: int | None = None
    rule: str = Field(description="How it was chosen, in words.")


class EvaluationSummary(_Record):
    """``realtime_evaluations/evaluation_summary.json``: one line per checkpoint, read by people,
    the report, and the sweep's pruner."""

    schema_version: int = 1
    trial_name: str
    checkpoints: dict[str, SummaryEntry] = Field(default_factory=dict, description="By checkpoint stem.")
    baseline: SummaryEntry | None = None
    best: BestCheckpoint | None = None
    total_checkpoints_evaluated: int = 0
    failed: dict[str, str] = Field(default_factory=dict, description="Checkpoint -> reason it failed.")
    history: list[SummaryEntry] = Field(default_factory=list, description="Rows of earlier versions of a file "
                                        "rewritten under the same name (not the bytes on disk now), oldest first.")
    notes: list[str] = Field(default_factory=list, description="Weak-evidence warnings shown with the results, "
                             "e.g. 'no references: clip_i, colour, cmmd not measured'.")
    last_update: datetime = Field(default_factory=utcnow)

    def ordered(self) -> list[SummaryEntry]:
        """Checkpoints in training order (step, then epoch; final files last among equals)."""
        def key(e: SummaryEntry) -> tuple[float, float, str]:
            big = float("inf")
            return (e.step if e.step is not None else big, e.epoch if e.epoch is not None else big,
                    e.checkpoint)
        return sorted(self.checkpoints.values(), key=key)
