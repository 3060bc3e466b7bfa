"""What to score: which folders are trials, what each is evaluated with, and which files are checkpoints.

A folder is served either because our trainer made it (``params.json`` holds the run config) or
because the user passed ``--config eval.toml`` (a folder written by sd-scripts, kohya_ss or any tool:
its ``[model]`` and ``[evaluation]`` sections say what to generate with). Checkpoints are the trial's
``output.name`` files, or in a folder without a trainer every complete ``*.safetensors`` (or those of
``--name PREFIX``). Nothing here loads a model or writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.config import RunConfig, load_config
from shared.errors import EpochscopeError
from shared.jsonio import read_model
from shared.naming import CHECKPOINT_SUFFIX, PICKLE_SUFFIXES, parse_stem
from shared.records import Params
from shared.safetensors_info import Completeness, SafetensorsInfo, inspect
from shared.stat_cache import StatCache
from shared.trial import TRIAL_DIR_RE, CheckpointFile, SweepRoot, Trial


@dataclass(frozen=True)
class Source:
    """How one folder is evaluated."""

    config: RunConfig
    output_name: str | None  # None: every *.safetensors in the folder is a checkpoint
    has_trainer: bool  # our trainer writes trainer_status.json there


@dataclass
class Scan:
    """One look at a folder's files."""

    ready: list[CheckpointFile] = field(default_factory=list)  # complete, in training order
    not_ready: list[tuple[Path, SafetensorsInfo]] = field(default_factory=list)  # incomplete or corrupt
    pickles: list[Path] = field(default_factory=list)  # never loaded
    foreign: list[Path] = field(default_factory=list)  # .safetensors of another output name


def problem_word(info: SafetensorsInfo) -> str:
    """'corrupt' for a file whose header is wrong, 'incomplete' for one still being written."""
    return "corrupt" if info.completeness is Completeness.CORRUPT else "incomplete"


def scan(folder: Path, output_name: str | None, headers: StatCache[SafetensorsInfo] | None = None) -> Scan:
    """``headers``: complete files' headers from earlier scans, reused while a file is unchanged (a header of
    an SDXL LoRA is ~0.5 MB of JSON, 5 ms to parse; a daemon scans every file of every trial each cycle)."""
    out = Scan()
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix in PICKLE_SUFFIXES:
            out.pickles.append(path)
            continue
        if not path.name.endswith(CHECKPOINT_SUFFIX):
            continue
        try:
            parsed = parse_stem(path.name, output_name)
        except ValueError:
            out.foreign.append(path)
            continue
        if headers is None:
            info = inspect(path)
        else:
            try:
                info = headers.get(path, inspect, keep=lambda i: i.is_complete)
            except FileNotFoundError:  # gone since it was listed
                continue
        if info.is_complete:
            out.ready.append(CheckpointFile(path, parsed, info))
        else:
            out.not_ready.append((path, info))
    out.ready.sort(key=CheckpointFile.sort_key)
    return out


def _folder_config(path: Path) -> RunConfig:
    """A run config read for evaluating a folder: a [dataset] the TOML does not set is empty (the run
    config's demo defaults must not stand in for a user's training or reference images)."""
    import tomllib

    config = load_config(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        raw = {}
    given = raw.get("dataset", {}) if isinstance(raw.get("dataset"), dict) else {}
    if "train_dir" not in given:
        config.dataset.train_dir = None
    return config


class Discovery:
    """The trials under ``root`` and the Source of each. ``config`` (from ``--config``) serves
    folders without params.json, and wins over params.json where both exist."""

    def __init__(self, root: Path, config_path: Path | None = None, name: str | None = None) -> None:
        self.root = Path(root)
        self.config_path = config_path
        self.name = name
        self._config: RunConfig | None = _folder_config(config_path) if config_path else None

    def mode(self) -> str | None:
        """'trial', 'root', or None while it cannot be told yet (nothing there)."""
        r = self.root
        if not r.is_dir():
            return None
        if (r / "params.json").exists() or TRIAL_DIR_RE.match(r.name) or any(r.glob("*" + CHECKPOINT_SUFFIX)):
            return "trial"
        if (r / "study.db").exists() or any(TRIAL_DIR_RE.match(p.name) for p in r.iterdir() if p.is_dir()):
            return "root"
        return "trial" if self._config is not None else None

    def trials(self) -> list[Trial]:
        mode = self.mode()
        if mode == "trial":
            return [Trial(self.root)]
        if mode == "root":
            return SweepRoot(self.root).trials()
        return []

    def source(self, trial: Trial) -> Source | None:
        """None while a trainer's folder has no params.json yet; raises for a folder that can never be
        evaluated as it is (no params.json and no --config)."""
        if self._config is not None:
            name = self.name
            if name is None and trial.params_path.exists():
                name = read_model(trial.params_path, Params).config.output.name
            return Source(self._config, name, trial.status_path.exists() or trial.params_path.exists())
        if trial.params_path.exists():
            params = read_model(trial.params_path, Params)
            return Source(params.config, self.name or params.config.output.name, True)
        if trial.checkpoint_paths():
            raise EpochscopeError(
                f"{trial.root} has checkpoints but no params.json (it was not made by `trainer run`): pass "
                "--config eval.toml whose [model] and [evaluation] sections say what to generate with "
                "(see configs/evaluate-folder.toml), and --name PREFIX to score only that run's files")
        return None

