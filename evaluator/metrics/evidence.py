"""Weak evidence, said out loud: no references, no training images, references that are training images.

``startup_warnings`` needs only the files (call it when a trial is first served); ``overlap_warnings``
compares the prepared reference and training sets (near-duplicates); ``result_notes`` is the short text
the summary, the report and the console table show beside the numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluator.metrics.memorisation import TrainingSet, copy_scores
from evaluator.metrics.sets import ReferenceSet

NO_REFERENCES = "no references: clip_i, colour, cmmd not measured"
NO_REFERENCES_DETAIL = (f"{NO_REFERENCES} (nor max_ref_sim, dino); the score uses clip_t and diversity only. "
                        "Set dataset.validation_dir or evaluation.references_dir to held-out images")
NO_TRAINING = ("no training images: memorisation (max_train_sim, copy_rate) is checked against the references "
               "only. Set dataset.train_dir")
NEAR_DUPLICATE_CLIP = 0.96  # cosine of two real-CLIP embeddings of one picture (re-encoded, resized, cropped)
MAX_LISTED = 5


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def identical_files(references: Sequence[Path], training: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(reference, training image) pairs with identical bytes. Only files of equal size are hashed;
    unreadable files are skipped (reading them fails later, with a clear error)."""
    def size(p: Path) -> int | None:
        try:
            return p.stat().st_size
        except OSError:
            return None

    ref_sizes = {size(r) for r in references} - {None}
    by_hash: dict[str, Path] = {}
    for t in training:
        if size(t) in ref_sizes:
            try:
                by_hash.setdefault(file_sha256(t), t)
            except OSError:
                continue
    pairs = []
    for r in references:
        try:
            digest = file_sha256(r) if by_hash else None
        except OSError:
            continue
        if digest in by_hash:
            pairs.append((r, by_hash[digest]))
    return pairs


def _listed(pairs: Sequence[str]) -> str:
    more = len(pairs) - MAX_LISTED
    return ", ".join(pairs[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def startup_warnings(references: Sequence[Path], training: Sequence[Path]) -> list[str]:
    """Warnings from the file lists alone: no references, no training images, and references that are
    byte-identical to a training image (same sha256), naming the files.

    Args:
        references: the trial's reference images (TrialSettings.references).
        training: the trial's training images (TrialSettings.training).
    """
    out = []
    if not references:
        out.append(NO_REFERENCES_DETAIL)
    if not training:
        out.append(NO_TRAINING)
    if references and training:
        same = [f"{r} = {t}" for r, t in identical_files(references, training)]
        if same:
            out.append(f"{len(same)} of {len(references)} references are training images (same file hash): "
                       f"{_listed(same)}. They measure memorisation, not generalisation: use held-out images")
    return out


def overlap_warnings(references: ReferenceSet | None, training: TrainingSet | None,
                     encoder_name: str = "") -> list[str]:
    """References that are near-duplicates of a training image: pixel near-copies (the copy test of
    ``memorisation``) or, with a trained CLIP model, CLIP cosine >= 0.96. Demo encoders (``demo:``) have
    random weights, so for them only the pixel test is used. Names the files."""
    if references is None or training is None or not len(references.images) or not len(training.names):
        return []
    pairs = []
    clip_ok = not encoder_name.startswith("demo:")
    for start in range(0, len(training.names), 256):
        stop = start + 256
        hits = np.zeros((len(references.images), min(stop, len(training.names)) - start), bool)
        if references.thumbnails is not None:
            hits |= copy_scores(references.thumbnails, training.thumbnails[start:stop])[0]
        if clip_ok:
            hits |= (references.embeddings @ training.embeddings[start:stop].T) >= NEAR_DUPLICATE_CLIP
        for i, j in zip(*np.nonzero(hits)):
            pairs.append(f"{references.names[i] if i < len(references.names) else i} ~ "
                         f"{training.names[start + j]}")
    if not pairs:
        return []
    n = len({p.split(" ~ ")[0] for p in pairs})
    return [f"{n} of {len(references.images)} references are near-duplicates of training images: {_listed(pairs)}. "
            "clip_i, colour and cmmd then reward memorisation: use held-out images"]


def result_notes(num_references: int, num_training_images: int, overlap: Sequence[str] = ()) -> list[str]:
    """The notes shown with the results (summary, report, console table)."""
    notes = []
    if num_references == 0:
        notes.append(NO_REFERENCES + " (nor max_ref_sim, dino); the score uses clip_t and diversity only")
    if num_training_images == 0:
        notes.append("no training images: memorisation checked against the references only")
    notes.extend(overlap)
    return notes
