import json
import struct

import torch
from safetensors.torch import save_file

from shared.safetensors_info import Completeness, inspect, is_complete


def _make(path, **meta):
    tensors = {"lora_unet_a.lora_down.weight": torch.randn(4, 64), "lora_unet_a.alpha": torch.tensor(4.0)}
    save_file(tensors, str(path), metadata={"ss_epoch": "3", "ss_steps": "12", **meta})
    return path.read_bytes()


def test_complete_file_metadata_and_size(tmp_path):
    data = _make(tmp_path / "a.safetensors", ss_output_name="a")
    info = inspect(tmp_path / "a.safetensors")
    assert info.is_complete and info.expected_size == len(data)
    assert info.metadata_int("ss_epoch") == 3 and info.metadata_int("ss_steps") == 12
    assert info.metadata["ss_output_name"] == "a"
    assert set(info.tensor_names) == {"lora_unet_a.lora_down.weight", "lora_unet_a.alpha"}
    (n,) = struct.unpack("<Q", data[:8])
    assert info.header_length == n


def test_file_written_in_chunks_is_incomplete_until_last_byte(tmp_path):
    data = _make(tmp_path / "src.safetensors")
    target = tmp_path / "growing.safetensors"
    seen = []
    with open(target, "wb") as f:
        for i in range(0, len(data), 97):
            f.write(data[i : i + 97])
            f.flush()
            seen.append((f.tell(), inspect(target).completeness))
    assert all(c is Completeness.INCOMPLETE for size, c in seen if size < len(data))
    assert seen[-1] == (len(data), Completeness.COMPLETE)
    assert is_complete(target)


def test_truncated_file_is_incomplete(tmp_path):
    data = _make(tmp_path / "src.safetensors")
    (tmp_path / "t.safetensors").write_bytes(data[:-1])
    info = inspect(tmp_path / "t.safetensors")
    assert info.completeness is Completeness.INCOMPLETE and "of" in info.reason


def test_corrupt_header_is_reported_corrupt(tmp_path):
    data = bytearray(_make(tmp_path / "src.safetensors"))
    (n,) = struct.unpack("<Q", data[:8])
    data[8:8 + n] = b"{" + b"x" * (n - 1)
    (tmp_path / "c.safetensors").write_bytes(bytes(data))
    assert inspect(tmp_path / "c.safetensors").completeness is Completeness.CORRUPT
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert inspect(tmp_path / "huge.safetensors").completeness is Completeness.CORRUPT


def test_file_longer_than_its_header_says_is_corrupt(tmp_path):
    data = _make(tmp_path / "src.safetensors")
    (tmp_path / "long.safetensors").write_bytes(data + b"\0" * 10)
    assert inspect(tmp_path / "long.safetensors").completeness is Completeness.CORRUPT


def test_missing_and_tiny_files(tmp_path):
    assert inspect(tmp_path / "nope.safetensors").completeness is Completeness.INCOMPLETE
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    assert not is_complete(tmp_path / "tiny.safetensors")


def test_header_with_bad_offsets_is_corrupt(tmp_path):
    header = json.dumps({"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert inspect(tmp_path / "b.safetensors").completeness is Completeness.CORRUPT


def test_a_stat_cache_computes_once_per_version_of_a_file(tmp_path):
    import os

    import pytest

    from shared.stat_cache import StatCache

    calls = []

    def compute(p):
        calls.append(p)
        return p.read_bytes()

    cache: StatCache[bytes] = StatCache()
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"one")
    assert cache.get(path, compute) == b"one" and cache.get(path, compute) == b"one"
    assert len(calls) == 1
    path.write_bytes(b"two")  # same size, rewritten in place: a new mtime
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert cache.get(path, compute) == b"two" and len(calls) == 2
    other = tmp_path / "b.tmp"
    other.write_bytes(b"six")
    st = os.stat(path)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime, another inode
    os.replace(other, path)
    assert cache.get(path, compute) == b"six" and len(calls) == 3
    assert cache.get(path, compute, keep=lambda v: False) == b"six" and len(calls) == 3  # a cached value stays
    path.write_bytes(b"sev")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    cache.get(path, compute, keep=lambda v: False)
    cache.get(path, compute, keep=lambda v: False)
    assert len(calls) == 5  # not kept: computed each time
    path.unlink()
    with pytest.raises(FileNotFoundError):
        cache.get(path, compute)


def test_a_scan_parses_a_complete_header_once_and_an_incomplete_one_each_time(tmp_path, monkeypatch):
    import evaluator.discovery as discovery
    from shared.stat_cache import StatCache

    data = _make(tmp_path / "lora-000001.safetensors", ss_output_name="lora")
    (tmp_path / "lora-000002.safetensors").write_bytes(data[: len(data) // 2])  # still being written
    parsed = []
    monkeypatch.setattr(discovery, "inspect", lambda p: parsed.append(p.name) or inspect(p))
    headers = StatCache()
    for _ in range(3):
        found = discovery.scan(tmp_path, "lora", headers)
        assert [c.path.name for c in found.ready] == ["lora-000001.safetensors"]
        assert [p.name for p, _ in found.not_ready] == ["lora-000002.safetensors"]
    assert parsed.count("lora-000001.safetensors") == 1 and parsed.count("lora-000002.safetensors") == 3
    (tmp_path / "lora-000002.safetensors").write_bytes(data)  # finished
    assert [c.path.name for c in discovery.scan(tmp_path, "lora", headers).ready] == [
        "lora-000001.safetensors", "lora-000002.safetensors"]


def test_nonfinite_values_are_counted_in_every_float_dtype_as_torch_counts_them(tmp_path):
    """NaN and +-inf planted in F64/F32/F16/BF16 tensors (numpy has no bfloat16: the check reads bits), counted
    as torch.isfinite counts them; integer tensors and the metadata are not values."""
    from shared.nonfinite import nonfinite_values

    g = torch.Generator().manual_seed(0)
    tensors = {f"lora_unet_{dtype}.lora_down.weight": torch.randn(7, 13, generator=g).to(getattr(torch, dtype))
               for dtype in ("float64", "float32", "float16", "bfloat16")}
    tensors["lora_unet_clean.lora_up.weight"] = torch.randn(5, 3, generator=g).half()
    tensors["lora_unet_big.alpha"] = torch.tensor(65504.0, dtype=torch.float16)  # the largest finite half
    tensors["lora_unet_ids"] = torch.tensor([-1, 0x7F80, 0x7FFFFFFF], dtype=torch.int32)  # NaN's bits, as ints
    for i, dtype in enumerate(("float64", "float32", "float16", "bfloat16")):
        t = tensors[f"lora_unet_{dtype}.lora_down.weight"].view(-1)
        t[i] = float("nan")
        t[i + 20 : i + 20 + i] = float("inf") if i % 2 else float("-inf")
    path = tmp_path / "diverged.safetensors"
    save_file(tensors, str(path))

    found = nonfinite_values(path)
    floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
    assert found.values == sum(int((~torch.isfinite(v)).sum()) for v in floats.values()) == 1 + 2 + 3 + 4
    assert found.total == sum(v.numel() for v in floats.values())
    assert sorted(found.tensors) == sorted(f"lora_unet_{d}.lora_down.weight"
                                           for d in ("float64", "float32", "float16", "bfloat16"))
    assert "diverged.safetensors holds 10 NaN or infinite values" in found.describe(path)


def test_the_real_files_in_tests_data_hold_no_nonfinite_value(tmp_path):
    from pathlib import Path

    from shared.nonfinite import nonfinite_values

    files = sorted((Path(__file__).parent / "data").rglob("*.safetensors"))
    assert len(files) >= 20
    for path in files:
        found = nonfinite_values(path)
        assert not found and found.total > 0, path


def test_a_file_that_is_not_safetensors_is_one_value_error(tmp_path):
    import pytest

    from shared.nonfinite import nonfinite_values

    for name, data in (("short", b"\x01\x00"), ("json", struct.pack("<Q", 3) + b"{x}"),
                       ("entry", struct.pack("<Q", 14) + b'{"a": {"x":1}}')):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            nonfinite_values(tmp_path / name)
