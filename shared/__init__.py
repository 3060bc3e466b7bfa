"""The file contract between the trainer and the evaluator: models, naming, layout, atomic I/O."""

from shared.errors import CheckpointError, ConfigError, EpochscopeError, FileFormatError
from shared.jsonio import atomic_write_text, read_model, read_model_or_none, write_model

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EpochscopeError",
    "FileFormatError",
    "atomic_write_text",
    "read_model",
    "read_model_or_none",
    "write_model",
]
