"""Train a LoRA from a TOML config, saving sd-scripts-style checkpoints into the trial folder.

Examples:
  python -m trainer run --config configs/demo.toml --new
  python -m trainer run --config x.toml --continue --steps 200    # 200 more steps
  python -m trainer run --config x.toml --dry-run                 # print the backend command
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from shared.config import RunConfig, load_config, require_training_data
from shared.errors import EpochscopeError, FileFormatError
from shared.folder_lock import acquire_trainer_lock
from shared.jsonio import read_model_or_none, write_model
from shared.liveness import new_run_id
from shared.records import Params, RunRecord, SweepInfo
from shared.trial import Trial
from trainer.backends import get_backend
from trainer.outputs import (
    back_up_previous_run,
    consume_stale_stop_request,
    has_run_files,
    other_run_files,
    other_run_names,
    previous_run_files,
)
from trainer.provenance import git_commit, package_versions
from trainer.reporting import Console, StatusFile
from trainer.supervisor import StopPolicy, Supervisor, continue_targets, new_status

SWEEP_INFO_ENV = "EPOCHSCOPE_SWEEP_INFO"  # set by `trainer sweep` for the trials it starts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="run config (TOML)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--new", action="store_true",
                      help="start over; an existing LoRA in the folder is moved to backup/<time>/, never overwritten")
    mode.add_argument("--continue", dest="cont", action="store_true",
                      help="resume from the newest complete training state")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="train N steps (with --continue: N more steps)")
    length.add_argument("--epochs", type=int, help="train N epochs (with --continue: N more epochs)")
    parser.add_argument("--output-dir", type=Path, help="trial folder (overrides output.dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.learning_rate=1e-4 (TOML value syntax)")
    parser.add_argument("--dry-run", action="store_true", help="print the backend command and exit")
    parser.add_argument("--stop-timeout", type=float, default=10.0,
                        help="seconds between SIGINT, SIGTERM and SIGKILL for backends that do not save on SIGINT")


def parse_overrides(items: list[str]) -> dict:
    import tomllib

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise EpochscopeError(f"--set {item!r}: expected KEY=VALUE, e.g. training.learning_rate=1e-4")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare string
    return out


def run(args: argparse.Namespace) -> int:
    if (args.steps is not None and args.steps < 1) or (args.epochs is not None and args.epochs < 1):
        raise EpochscopeError("--steps and --epochs must be at least 1")
    overrides = parse_overrides(args.set)
    if args.output_dir:
        overrides["output.dir"] = str(args.output_dir.resolve())
    config = load_config(args.config, overrides)
    require_training_data(config, args.config)
    trial = Trial(config.output.dir)
    backend = get_backend(config.training.backend)
    if args.dry_run:
        return _dry_run(config, trial, backend, args)

    _ensure_writable(trial.root)
    lock = acquire_trainer_lock(trial.root)  # before anything is written: a second trainer changes nothing
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _interrupt)
    status = StatusFile(trial, new_status(backend.name, new_run_id(), config.training.device))
    start = _Start(status)
    try:
        return _run_locked(args, config, trial, backend, start)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the supervisor took over: nothing was started
        if start.owned:
            status.update(state="stopped", exit_code=130, message="stopped during start-up; nothing was trained")
            status.flush(force=True)
        print("stopped during start-up" + ("" if start.owned else "; nothing was changed"),
              file=sys.stderr, flush=True)
        return 130
    except EpochscopeError as e:
        if start.owned:
            status.update(state="failed", exit_code=2, message=str(e))
            status.flush(force=True)
        raise
    except BaseException as e:
        if start.owned and not status.status.is_final:
            status.update(state="failed", exit_code=1, message=f"trainer crashed: {type(e).__name__}: {e}")
            status.flush(force=True)
        raise
    finally:
        status.stop_heartbeat()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


class _Start:
    """Whether this run owns the folder's trainer_status.json yet.

    A refused start changes nothing: a previous run's status (finished, failed, ...) is replaced only once
    every check has passed (the folder's mode, the backend's check, its command). A folder no run has
    written to is this run's from the start, so its "starting" shows while a slow backend check runs, and
    a failure there is recorded (the sweep and run_pair read why from it); there is nothing to keep."""

    def __init__(self, status: StatusFile) -> None:
        self.status = status
        self.owned = False

    def claim(self) -> None:
        if not self.owned:
            self.owned = True
            self.status.flush(force=True)  # at once: the previous run's final status must not outlive this start
            self.status.start_heartbeat()


def _run_locked(args: argparse.Namespace, config: RunConfig, trial: Trial, backend, start: _Start) -> int:
    status = start.status
    fresh = not has_run_files(trial)
    resume = _check_folder(config, trial, backend, args)  # refusals first: they change nothing
    if fresh:
        start.claim()
    backend.check(config)
    target_steps, target_epochs = continue_targets(resume, args.steps, args.epochs)
    spec = backend.build_launch(config, trial, resume, target_steps, target_epochs)
    _clear_folder(config, trial, args)  # --new moves the previous run aside (its status with it)
    start.claim()
    command = spec.argv if backend.name != "builtin" else None
    record = RunRecord(run_id=status.status.run_id or "", mode="continue" if resume else "new",
                       resumed_from=resume.state_dir.name if resume else None,
                       resumed_at_step=resume.step if resume else None, target_steps=target_steps,
                       target_epochs=target_epochs, command=command)
    previous = _previous_params(trial) if resume is not None else None
    ours, theirs = package_versions(), backend.versions(config)
    if backend.name == "sd-scripts":  # its own venv trains: ours would mislead (only our version says something)
        ours = {k: v for k, v in ours.items() if k == "epochscope"}
    params = Params(trial_name=trial.name, backend=backend.name, config=config, command=command,
                    versions={**ours, **{k: v for k, v in theirs.items() if k != "sd_scripts_commit"}},
                    git_commit=git_commit(Path(__file__).parent), sweep=_sweep_info(),
                    history=[*(previous.history if previous else []), record])
    if previous is not None:
        params.created_at = previous.created_at  # the run's start: ss_training_started_at stays the first's
    if backend.name == "sd-scripts":
        params.sd_scripts_commit = theirs.get("sd_scripts_commit")
    write_model(trial.params_path, params)
    if resume is not None:
        status.update(step=resume.step, epoch=resume.epoch)
    status.flush(force=True)

    console = Console()
    console.message(f"trial {trial.root} ({backend.name} backend)"
                    + (f", resuming at step {resume.step}" if resume else ""))
    supervisor = Supervisor(backend, trial, status, config.output.name, console,
                            StopPolicy(args.stop_timeout, args.stop_timeout), resume)
    # Unbuffered: `tail -f` follows, and a line a full disk refused is lost, not left to fail again at close.
    with open(trial.log_path, "ab", buffering=0) as log:
        supervisor.log_line(log, f"$ {spec.printable()}")
        outcome = supervisor.run(spec, log)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the work has ended: let nothing interrupt the record of it
        signal.signal(sig, signal.SIG_IGN)
    status.update(state=outcome.state, exit_code=outcome.exit_code, message=outcome.message,
                  last_checkpoint=outcome.last_checkpoint or status.status.last_checkpoint, eta_seconds=None)
    status.flush(force=True)
    line = f"{outcome.state}: {outcome.message}"
    if outcome.last_checkpoint:
        line += f" (last checkpoint {outcome.last_checkpoint})"
    try:
        print(line, file=sys.stderr if outcome.state == "failed" else sys.stdout, flush=True)
    except BrokenPipeError:  # `trainer run ... | head`: the status file already says it all
        pass
    return outcome.exit_code


def _previous_params(trial: Trial) -> Params | None:
    """The params.json a continuation extends (its history and start time), if it is readable."""
    try:
        previous = read_model_or_none(trial.params_path, Params)
    except FileFormatError:
        return None
    if previous is not None and not previous.history:  # written before params kept a history
        previous.history = [RunRecord(run_id="", mode="new", started_at=previous.created_at,
                                      command=previous.command)]
    return previous


def _ensure_writable(folder: Path) -> None:
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = "" if part == folder else f": {part}"
                raise EpochscopeError(f"output.dir {folder}{where} is a file, not a folder; "
                                      "choose another output.dir (or --output-dir)")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise EpochscopeError(f"output.dir {folder} is not writable: {e.strerror}") from None


def _check_folder(config: RunConfig, trial: Trial, backend, args):
    """Refuse a start that does not fit the folder (nothing is changed here); the resume point of --continue."""
    name = config.output.name
    others = other_run_files(trial, name)
    if others and not args.new:
        names = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
        owners = ", ".join(repr(n) for n in other_run_names(trial, name))
        raise EpochscopeError(f"{trial.root} holds the files of another run ({owners}: {names}); "
                              f"'{name}' would mix with it and replace its params.json: pass --new to move "
                              "that run's files to backup/ and start over, or choose another output.dir")
    resume = None
    if args.cont:
        resume = backend.find_resume_point(config, trial)
        if resume is None:
            raise EpochscopeError(f"--continue: no complete training state in {trial.root} "
                                  "(nothing to resume); start with --new")
    elif not args.new:
        previous = previous_run_files(trial, name)
        if previous:
            raise EpochscopeError(f"{trial.root} already has checkpoints of '{name}' "
                                  f"({previous[0].name}, ...): pass --continue to resume or --new to start over "
                                  "(the old files are moved to backup/)")
    return resume


def _clear_folder(config: RunConfig, trial: Trial, args) -> None:
    """Once every check has passed: --new moves the previous run aside; an old stop request is set aside."""
    if args.new:
        backup = back_up_previous_run(trial, config.output.name)
        if backup is not None:
            print(f"moved the previous run's files to {backup}", flush=True)
    stale = consume_stale_stop_request(trial)
    if stale is not None:
        print(f"an old stop request was set aside as {stale.name}", flush=True)


def _sweep_info() -> SweepInfo | None:
    raw = os.environ.get(SWEEP_INFO_ENV)
    if not raw:
        return None
    try:
        return SweepInfo.model_validate(json.loads(raw))
    except ValueError as e:
        raise EpochscopeError(f"${SWEEP_INFO_ENV} is not valid sweep info: {e}") from None


def _dry_run(config: RunConfig, trial: Trial, backend, args) -> int:
    try:
        backend.check(config)
    except EpochscopeError as e:
        print(f"warning: {e}", file=sys.stderr)
    resume = backend.find_resume_point(config, trial) if args.cont else None
    target_steps, target_epochs = continue_targets(resume, args.steps, args.epochs)
    spec = backend.build_launch(config, trial, resume, target_steps, target_epochs)
    print(spec.printable())
    return 0
