"""The built-in trainer's dataset folder as users really lay it out: captions that are not UTF-8, 0_
folders, a caption extension without its dot, 16-bit PNGs, and images loose in the dataset folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, write_demo_config
from shared.jsonio import read_model
from shared.records import TrainerStatus
from trainer.builtin import dataset as ds


@pytest.fixture
def data(tmp_path, demo_assets) -> Path:
    """A copy of the demo dataset: 2_circle/ and 2_square/, 4 captioned images each."""
    dest = tmp_path / "data"
    shutil.copytree(demo_assets.train_dir, dest)
    return dest


def _config_for(tmp_path: Path, data: Path, extra: str = "") -> Path:
    cfg = write_demo_config(tmp_path / "c.toml", tmp_path / "t")
    text = cfg.read_text().replace('train_dir = "demo:dataset/train"', f'train_dir = "{data}"{extra}')
    cfg.write_text(text)
    return cfg


def _one_clear_line(capsys, cfg: Path) -> str:
    from trainer.cli import main

    assert main(["run", "--config", str(cfg), "--new"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_caption_that_is_not_utf8_is_one_error_naming_it(tmp_path, data, capsys):
    caption = data / "2_circle" / "circle_01.txt"
    caption.write_bytes("un caf\xe9, sks style".encode("latin-1"))
    err = _one_clear_line(capsys, _config_for(tmp_path, data))
    assert str(caption) in err and "UTF-8" in err
    st = read_model(tmp_path / "t" / "trainer_status.json", TrainerStatus)
    assert st.state == "failed" and str(caption) in st.message


def test_zero_repeat_folder_is_skipped_with_a_warning(data):
    shutil.copytree(data / "2_square", data / "0_unused")
    warnings: list[str] = []
    items = ds.scan(data, warn=warnings.append)
    assert {i.image.parent.name for i in items} == {"2_circle", "2_square"}
    assert len(items) == 8 and all(i.repeats == 2 for i in items)
    assert len(warnings) == 1 and "0_unused" in warnings[0] and "0 repeats" in warnings[0]


def test_only_zero_repeat_folders_is_one_error_naming_them(tmp_path, data, capsys):
    """Before: accepted, then the worker died of ZeroDivisionError."""
    for name in ("2_circle", "2_square"):
        (data / name).rename(data / f"0_{name[2:]}")
    err = _one_clear_line(capsys, _config_for(tmp_path, data))
    assert "has no images" in err and "0_circle" in err and "0_square" in err


def test_caption_extension_without_its_dot_reads_the_txt_files(data):
    with_dot = ds.scan(data, ".txt")
    without = ds.scan(data, "txt")
    assert [(i.image, i.caption) for i in without] == [(i.image, i.caption) for i in with_dot]
    assert without[0].caption == (data / "2_circle" / "circle_00.txt").read_text().strip() != "circle"


def test_sixteen_bit_png_keeps_its_tones(tmp_path):
    """A 0..65535 greyscale gradient: Pillow's convert("RGB") clipped it to nearly white (mean 251)."""
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    px = ds.load_training_image(path, 64).pixels
    assert px.dtype == np.uint8 and px.shape == (64, 64, 3)
    assert abs(px.mean() - 127.5) < 3, px.mean()
    assert px[:, :4].mean() < 10 and px[:, -4:].mean() > 245  # dark stays dark, light stays light
    expected = np.round(ramp / 257.0)
    assert np.abs(px[..., 0].astype(float) - expected).max() <= 2  # only resampling rounding


def test_loose_images_are_used_beside_an_unrelated_folder(data):
    """Before: an empty captions_backup/ made 8 loose images 'no images in N_concept/ folders'."""
    for folder in ("2_circle", "2_square"):
        for f in (data / folder).iterdir():
            f.rename(data / f.name)
        (data / folder).rmdir()
    (data / "captions_backup").mkdir()
    (data / "captions_backup" / "old.png").write_bytes(b"not read: not an N_ folder")
    items = ds.scan(data)
    assert len(items) == 8 and {i.image.parent for i in items} == {data}
    assert all(i.repeats == 1 for i in items)
    assert items[0].caption == (data / "circle_00.txt").read_text().strip()


def test_loose_images_beside_n_folders_are_ignored_with_a_warning(data):
    shutil.copy(data / "2_circle" / "circle_00.png", data / "stray.png")
    warnings: list[str] = []
    items = ds.scan(data, warn=warnings.append)
    assert len(items) == 8 and all(i.image.parent != data for i in items)
    assert len(warnings) == 1 and "1 images directly in" in warnings[0]


def test_no_images_anywhere_says_where_they_may_go(tmp_path):
    root = tmp_path / "empty"
    (root / "captions_backup").mkdir(parents=True)
    with pytest.raises(ds.DatasetError) as e:
        ds.scan(root)
    assert str(root) in str(e.value) and "has no images" in str(e.value) and "directly in it" in str(e.value)


@pytest.mark.slow
def test_real_run_with_txt_extension_and_a_zero_folder(tmp_path, data):
    """The trainer itself: before, 'caption_extension = "txt"' was an internal error (exit 1)."""
    shutil.copytree(data / "2_square", data / "0_unused")
    cfg = _config_for(tmp_path, data, '\ncaption_extension = "txt"')
    run_cli("trainer", "run", "--config", str(cfg), "--new", "--steps", "1")
    log = (tmp_path / "t" / "training.log").read_text()
    assert "dataset: 8 images, 16 samples per epoch" in log
    assert "0_unused is skipped: 0 repeats" in log
    st = read_model(tmp_path / "t" / "trainer_status.json", TrainerStatus)
    assert st.state == "finished" and st.step == 1
