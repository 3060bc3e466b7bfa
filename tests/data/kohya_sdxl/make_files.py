"""Rebuild the small real sd-scripts / LyCORIS SDXL LoRA files in this folder (for maintainers; not run by tests).

Run with the project venv from the repository root:

    SD_SCRIPTS_DIR=/path/to/sd-scripts SD_SCRIPTS_PYTHON=/path/to/sd-venv/bin/python \\
        .venv/bin/python tests/data/kohya_sdxl/make_files.py [--only lora_unet_te locon ...] [--docs-only|--trim-only]

The SDXL twin of ``tests/data/kohya_sd15/make_files.py``, whose ``trim``, ``log`` and ``package_versions`` it
reuses. Defaults: third_party/sd-scripts and third_party/sd-venv/bin/python; sd-scripts is only ever run as a
child process with its own Python, one run at a time. Every network is trained with ``sdxl_train_network.py``
on CPU for 2 optimizer steps (1 image of 64x64 px, batch 1, 2 epochs, a file every epoch) on the random-weight
SDXL model from tests/_sd_scripts_helpers.py (``build_sdxl_random``), with a learning rate high enough (1e-2)
that the zero-initialised up/second factors become non-zero. The work folder (tokenizer cache, dataset,
sd-scripts outputs, logs and the untrimmed files' module names) is .cache/kohya_sdxl_work; only the
.safetensors files listed in NETWORKS are copied here (trimmed), then manifest.json and README.md are
regenerated.

The SDXL model needs about 14 GB in fp32 (``--mixed_precision no``). On a shared machine a run starts only when
NEEDS_AVAILABLE_BYTES are free, is killed if its anonymous memory passes MEMORY_LIMIT_BYTES or the machine runs
short, and its wall time and peak memory are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
WORK = REPO / ".cache" / "kohya_sdxl_work"
MODEL = REPO / ".cache" / "sdxl-random"
SD_DIR = Path(os.environ.get("SD_SCRIPTS_DIR", REPO / "third_party" / "sd-scripts"))
SD_PY = Path(os.environ.get("SD_SCRIPTS_PYTHON", REPO / "third_party" / "sd-venv" / "bin" / "python"))
SD_COMMIT = os.environ.get("SD_SCRIPTS_COMMIT", "48d368fa")  # the checkout has no .git; say which commit it is
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "CUDA_VISIBLE_DEVICES": ""}
MEMORY_LIMIT_BYTES = 16 * 2**30  # anonymous memory of the sd-scripts process tree
MIN_AVAILABLE_BYTES = 2**30  # or the machine's MemAvailable
NEEDS_AVAILABLE_BYTES = 16 * 2**30  # a run starts only when the machine has this much available


def _load_sd15():
    spec = importlib.util.spec_from_file_location("kohya_sd15_make_files", HERE.parent / "kohya_sd15" / "make_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sd15 = _load_sd15()
log = sd15.log

# name: (kind, network_module, extra args, trains_unet, trains_text_encoder)
# LyCORIS runs with its default preset ("full"): sd-scripts' SDXL UNet has no TimestepEmbedding class, so the
# duplicate-name failure that forces a preset on SD 1.5 (see ../kohya_sd15/README.md) does not happen here.
NETWORKS: dict[str, tuple[str, str, list[str], bool, bool]] = {
    "lora_unet_te": ("lora", "networks.lora", [], True, True),
    "lora_unet_only": ("lora", "networks.lora", ["--network_train_unet_only", "--cache_text_encoder_outputs"],
                       True, False),
    "locon": ("locon", "networks.lora", ["--network_args", "conv_dim=2", "conv_alpha=1"], True, True),
    # LoKr and LoHa rebuild every adapted weight in full (fp32) in the forward pass, and autograd keeps them for
    # the backward: both runs passed 17 GiB RSS in their first step, LoKr even with --gradient_checkpointing.
    # LyCORIS' bypass_mode computes W x + dW x without building W + dW (the same parameters, the same file);
    # gradient checkpointing trims the rest.
    "lokr": ("lokr", "lycoris.kohya", ["--network_args", "algo=lokr", "conv_dim=2", "conv_alpha=1", "bypass_mode=True",
                                       "--gradient_checkpointing"], True, True),
    # Not made on the 23 GB build machine: even with bypass_mode and gradient checkpointing, LoHa passed 16 GiB of
    # anonymous memory in its first step, also with --network_train_unet_only --cache_text_encoder_outputs (see
    # NOTES). It is kept here as LoKr's twin for a machine with more memory (raise MEMORY_LIMIT_BYTES).
    "loha": ("loha", "lycoris.kohya", ["--network_args", "algo=loha", "conv_dim=2", "conv_alpha=1", "bypass_mode=True",
                                       "--gradient_checkpointing"], True, True),
}
KEEP_EPOCH_FILE = {"lora_unet_te"}  # also keep <name>-000001.safetensors (ss_epoch 1)

# Trimming (files over sd15.TRIM_ABOVE bytes): whole modules whose sd-scripts name starts with one of these.
# Text encoders: layer 0 of each. UNet (sd-scripts' original ldm names): one resnet with a 1x1 skip conv
# (input_blocks_4_0, 320 -> 640 channels) and the attention after it (input_blocks_4_1: proj_in/proj_out and
# both transformer blocks), both downsamplers, the middle block's first resnet and transformer block 0 of its
# attention (plus proj_in/proj_out), an output resnet with a skip conv and the upsampler after it
# (output_blocks_5_0, output_blocks_5_2_conv), the 1280-channel upsampler (output_blocks_2_2_conv), and
# time_embed / label_emb / conv_in / conv_out if a file has them.
KEEP_PREFIXES = (
    "lora_te1_text_model_encoder_layers_0_", "lora_te2_text_model_encoder_layers_0_",
    "lora_unet_input_blocks_4_0_", "lora_unet_input_blocks_4_1_",
    "lora_unet_input_blocks_3_0_op", "lora_unet_input_blocks_6_0_op",
    "lora_unet_middle_block_0_", "lora_unet_middle_block_1_proj_", "lora_unet_middle_block_1_transformer_blocks_0_",
    "lora_unet_output_blocks_5_0_", "lora_unet_output_blocks_5_2_conv", "lora_unet_output_blocks_2_2_conv",
    "lora_unet_time_embed_", "lora_unet_label_emb_", "lora_unet_input_blocks_0_0", "lora_unet_out_2",
)


def trim(path: Path) -> None:
    """``sd15.trim`` with the SDXL module prefixes above (its keep rule and metadata note, unchanged)."""
    with _patched(sd15, KEEP_PREFIXES=KEEP_PREFIXES):
        sd15.trim(path)


@contextlib.contextmanager
def _patched(module, **values):
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def prepare() -> tuple[Path, Path]:
    """The random SDXL model, sd-scripts' tokenizer cache (both SDXL tokenizers) and a one-image dataset."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from _sd_scripts_helpers import build_sdxl_random

    t0 = time.monotonic()
    build_sdxl_random(MODEL)
    log(f"model ready in {time.monotonic() - t0:.1f} s: {MODEL}")
    return sd15.tokenizer_cache_and_dataset(WORK)


def command(name: str, tok: Path, data: Path) -> list[str]:
    _, module, extra, _, _ = NETWORKS[name]
    return [str(SD_PY), str(SD_DIR / "sdxl_train_network.py"),
            "--pretrained_model_name_or_path", str(MODEL), "--train_data_dir", str(data),
            "--resolution", "64,64", "--caption_extension", ".txt", "--train_batch_size", "1",
            "--output_dir", str(WORK / "out" / name), "--output_name", name, "--save_model_as", "safetensors",
            "--network_module", module, "--network_dim", "2", "--network_alpha", "1", *extra,
            "--learning_rate", "1e-2", "--optimizer_type", "AdamW", "--lr_scheduler", "constant",
            "--mixed_precision", "no", "--save_precision", "fp16", "--no_half_vae", "--seed", "0",
            "--max_train_epochs", "2", "--save_every_n_epochs", "1", "--max_data_loader_n_workers", "0",
            "--tokenizer_cache_dir", str(tok)]


def shown(cmd: list[str]) -> str:
    """The command as the README shows it: machine paths replaced by names."""
    s = shlex.join(cmd)
    for path, name in ((str(SD_PY), "$SD_SCRIPTS_PYTHON"), (str(SD_DIR), "$SD_SCRIPTS_DIR"),
                       (str(WORK), ".cache/kohya_sdxl_work"), (str(MODEL), ".cache/sdxl-random")):
        s = s.replace(path, name)
    return s


def _memory(pid: int) -> tuple[int, int]:
    """(resident bytes, anonymous resident bytes) of ``pid`` and its descendants ((0, 0) once gone). RSS also
    counts the pages of the mmap'ed model files, which the kernel can drop; RssAnon is what cannot be dropped."""
    rss = anon = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1]) * 1024
            for t in Path(f"/proc/{p}/task").iterdir():
                children = Path(f"/proc/{p}/task/{t.name}/children").read_text().split()
                pids.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return rss, anon


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def run_watched(cmd: list[str], logf) -> tuple[int, float, int, int, str]:
    """Run ``cmd``; returns (exit code, wall seconds, peak RSS and peak anonymous RSS in bytes of its process
    tree, why it was killed or ""). It is killed when its anonymous memory passes MEMORY_LIMIT_BYTES or the
    machine has less than MIN_AVAILABLE_BYTES left."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=logf, stderr=subprocess.STDOUT)
    peak = peak_anon = 0
    killed = ""

    def watch() -> None:
        nonlocal peak, peak_anon, killed
        while proc.poll() is None:
            rss, anon = _memory(proc.pid)
            peak, peak_anon = max(peak, rss), max(peak_anon, anon)
            available = _mem_available()
            if anon > MEMORY_LIMIT_BYTES or available < MIN_AVAILABLE_BYTES:
                killed = (f"killed for memory (anonymous {anon / 2**30:.1f} GiB, limit "
                          f"{MEMORY_LIMIT_BYTES / 2**30:.0f}; machine MemAvailable {available / 2**30:.1f} GiB)")
                proc.kill()
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rc = proc.wait()
    watcher.join()
    return rc, time.monotonic() - t0, peak, peak_anon, killed


def unet_patterns(path: Path) -> dict[str, list]:
    """Module-name patterns of one untrimmed file: block / layer numbers replaced by ``{i}``/``{t}``/``{l}``;
    for each pattern, how many modules and which numbers."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        modules = sorted({k.partition(".")[0] for k in f.keys()})
    found: dict[str, list] = defaultdict(lambda: [0, set()])
    for m in modules:
        nums = []

        def sub(match: re.Match, tag: str) -> str:
            nums.append(int(match.group(2)))
            return f"{match.group(1)}{{{tag}}}"

        p = re.sub(r"((?:input|output)_blocks_)(\d+)", lambda x: sub(x, "i"), m)
        p = re.sub(r"(transformer_blocks_)(\d+)", lambda x: sub(x, "t"), p)
        p = re.sub(r"(encoder_layers_)(\d+)", lambda x: sub(x, "l"), p)
        found[p][0] += 1
        found[p][1].add(tuple(nums))
    return {p: [n, sorted(v)] for p, (n, v) in sorted(found.items())}


def _span(values) -> str:
    """``[0, 1, 2, 4, 5]`` -> ``0..2,4,5`` (``..`` for three or more in a row)."""
    values = sorted(set(values))
    runs, start = [], values[0]
    for a, b in zip(values, values[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}..{a}" if a - start >= 2 else ",".join(map(str, range(start, a + 1))))
            start = b
    return ",".join(runs)


def _compact(values: list) -> str:
    """The numbers of one pattern: ``{4,5}`` for one placeholder; for two, the first's values grouped by the
    second's, e.g. ``{4,5}×{0..1}; {7,8}×{0..9}``."""
    if not values or not values[0]:
        return ""
    if len(values[0]) == 1:
        return "{" + _span([v[0] for v in values]) + "}"
    by_first: dict[int, list[int]] = defaultdict(list)
    for v in values:
        by_first[v[0]].append(v[1])
    groups: dict[str, list[int]] = defaultdict(list)
    for first, seconds in sorted(by_first.items()):
        groups[_span(seconds)].append(first)
    return "; ".join(f"{{{_span(firsts)}}}×{{{sec}}}" for sec, firsts in groups.items())


def train(name: str, tok: Path, data: Path) -> dict:
    out = WORK / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = command(name, tok, data)
    log(f"{name}: {shown(cmd)}")
    while _mem_available() < NEEDS_AVAILABLE_BYTES:  # the machine is shared: wait for room
        log(f"{name}: waiting for {NEEDS_AVAILABLE_BYTES / 2**30:.0f} GiB of free memory "
            f"({_mem_available() / 2**30:.1f} GiB now)")
        time.sleep(30)
    with open(out / "train.log", "w") as logf:
        rc, wall, peak, peak_anon, killed = run_watched(cmd, logf)
    result = {"command": shown(cmd), "wall_s": round(wall, 1), "peak_rss_gb": round(peak / 2**30, 2),
              "peak_anon_gb": round(peak_anon / 2**30, 2)}
    log(f"{name}: exit {rc}, {wall:.0f} s, peak RSS {peak / 2**30:.2f} GiB (anonymous {peak_anon / 2**30:.2f} GiB)")
    dest = HERE / name
    shutil.rmtree(dest, ignore_errors=True)
    final = out / f"{name}.safetensors"
    if rc != 0 or not final.exists():
        tail = (out / "train.log").read_text(errors="replace").splitlines()[-25:]
        errors = [line for line in tail if re.search(r"Error|error:|Exception", line)] or tail[-3:]
        reason = killed or f"exit code {rc}"
        result["error"] = f"{reason}: " + " | ".join(e.strip() for e in errors[-3:])
        log(f"{name}: FAILED {result['error']}")
        (out / "result.json").write_text(json.dumps(result, indent=1))
        return result
    dest.mkdir()
    files = [final] + ([out / f"{name}-000001.safetensors"] if name in KEEP_EPOCH_FILE else [])
    result["untrimmed"] = {}
    for src in files:
        result["untrimmed"][src.name] = {"bytes": src.stat().st_size, **sd15.describe(src),
                                         "families": describe(src)["families"], "patterns": unet_patterns(src)}
        shutil.copy2(src, dest / src.name)
        trim(dest / src.name)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    log(f"{name}: ok")
    return result


def describe(path: Path) -> dict:
    """``sd15.describe`` with the key families split by side: ``lora_te1``, ``lora_te2``, ``lora_unet``."""
    from safetensors import safe_open

    d = sd15.describe(path)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    families = Counter()
    for k in keys:
        module, _, suffix = k.partition(".")
        side = next((s for s in ("lora_te1", "lora_te2", "lora_unet") if module.startswith(s + "_")), module)
        families[f"{side}_….{suffix}"] += 1
    return {**d, "families": dict(sorted(families.items()))}


def _results() -> dict[str, dict]:
    """Each network's last result.json from the work folder (commands, timings, untrimmed names)."""
    found = {}
    for name in NETWORKS:
        p = WORK / "out" / name / "result.json"
        if p.exists():
            found[name] = json.loads(p.read_text())
    return found


def _cell(res: dict, key: str, unit: str) -> str:
    return f"{res[key]} {unit}" if res.get(key) is not None else "-"


def write_docs(results: dict[str, dict]) -> None:
    results = {**_results(), **results}
    versions = sd15.package_versions()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    manifest = {"sd_scripts_commit": SD_COMMIT, "packages": versions, "date": date,
                "base_model": "tests/_sd_scripts_helpers.py build_sdxl_random (random SDXL 1.0 base weights, fp16)",
                "files": [], "networks": []}
    rows, sections, runs, pattern_sections = [], [], [], []
    for name, (kind, module, extra, unet, te) in NETWORKS.items():
        res = results.get(name) or {"command": shown(command(name, WORK / "tokenizer-cache", WORK / "data")),
                                    "error": "not run"}
        manifest["networks"].append({"name": name, "kind": kind, "command": res["command"],
                                     **({"error": res["error"]} if res.get("error") else {})})
        sections.append(f"### `{name}/`\n\n```bash\n{res['command']}\n```\n")
        runs.append(f"| `{name}` | {_cell(res, 'wall_s', 's')} | {_cell(res, 'peak_rss_gb', 'GiB')} | "
                    f"{_cell(res, 'peak_anon_gb', 'GiB')} | "
                    f"{'**failed**: ' + res['error'] if res.get('error') else 'ok'} |")
        if res.get("error"):
            sections.append(f"**Not made.** {res['error']}\n")
            continue
        for path in sorted((HERE / name).glob("*.safetensors")):
            entry, row = sd15.file_entry(path, HERE, kind, module, unet, te, describe)
            manifest["files"].append(entry)
            rows.append(row)
        for fname, u in sorted(res.get("untrimmed", {}).items()):
            if fname != f"{name}.safetensors":
                continue  # the epoch-1 file has the same names
            fam = ", ".join(f"`{k}` ×{v}" for k, v in u["families"].items())
            lines = [f"### `{name}` (untrimmed `{fname}`: {u['keys']} keys, {u['bytes'] / 1e6:.1f} MB)\n",
                     f"Key families: {fam}.\n", "| module-name pattern | modules | numbers |", "| --- | --- | --- |"]
            for pat, (n, values) in u["patterns"].items():
                lines.append(f"| `{pat}` | {n} | {_compact(values)} |")
            pattern_sections.append("\n".join(lines) + "\n")
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    keep = ", ".join(f"`{p}`" for p in KEEP_PREFIXES)
    readme = f"""# Real sd-scripts / LyCORIS LoRA files for SDXL (test data)

Made on {date} by `make_files.py` (in this folder; rebuilds everything, `--trim-only` re-trims, `--docs-only`
rewrites this page) with a real kohya-ss sd-scripts `sdxl_train_network.py` at commit {SD_COMMIT}, in its own
venv: {vers}. CPU only.

Base model: the SDXL-1.0-base-architecture diffusers folder with random weights from
`tests/_sd_scripts_helpers.py` (`build_sdxl_random`, `.cache/sdxl-random`; configs in `tests/_sdxl_configs.py`).
Dataset: one 64×64 image (`1_subject/img.png`, caption `a red circle, sks`), batch 1, 2 epochs = 2 optimizer
steps, AdamW, constant learning rate 1e-2 (so the zero-initialised up / second factors are non-zero),
`--mixed_precision no --save_precision fp16 --no_half_vae --seed 0`, network dim 2, alpha 1, a file every epoch.
The weights mean nothing; the key names, shapes, dtypes and metadata are exactly what sd-scripts and LyCORIS
write. Only the final file of each run is kept, plus the epoch-1 file of `lora_unet_te`.

To keep the repository small, a file over {sd15.TRIM_ABOVE:,} bytes keeps only whole modules whose name starts
with one of {keep} (`make_files.py`, `KEEP_PREFIXES`, applied by the SD 1.5 folder's `trim`): text-encoder
layer 0 of each encoder; in the UNet (sd-scripts' original, ldm-style names) a resnet with a 1×1 skip conv and
the attention after it (`input_blocks_4_0`, `input_blocks_4_1` with both transformer blocks and
`proj_in`/`proj_out`), both downsamplers, the middle block's first resnet and transformer block 0 of its
attention, an output resnet with a skip conv and the upsampler after it (`output_blocks_5_0`,
`output_blocks_5_2_conv`), the 1280-channel upsampler `output_blocks_2_2_conv`, and
`time_embed`/`label_emb`/`conv_in`/`conv_out` where a file has them. The kept
tensors and the metadata are unchanged, and the metadata key `epochscope_test_trimmed` says what was kept.
`manifest.json` lists every file (path, kind, trains_unet, trains_text_encoder, ss_epoch, ss_steps, keys).

`$SD_SCRIPTS_DIR` is the sd-scripts checkout, `$SD_SCRIPTS_PYTHON` its venv's Python;
`.cache/kohya_sdxl_work/tokenizer-cache` was made by `python -m trainer tokenizer-cache` (it holds
`openai_clip-vit-large-patch14/` and `laion_CLIP-ViT-bigG-14-laion2B-39B-b160k/`, the two folders
sdxl_train_util's `load_tokenizers` reads). Environment: `HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=`.

## What each file holds

Key families: `lora_unet_…`/`lora_te1_…`/`lora_te2_…` stand for every module name of that side; ×N is how many keys.

| file | kind | keys | key families | ss_network_module | ss_network_args | ss_epoch | ss_steps | size |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Runs

Wall time and peak memory of each sd-scripts process (its process tree, polled every 0.5 s), on a 2-core CPU
machine shared with other work. Peak RSS includes the pages of the mmap'ed fp16 model files (up to 7 GB, which
the kernel can drop); anonymous is the memory the process itself holds (`RssAnon`; "-" where not measured).

| run | wall | peak RSS | peak anonymous | result |
| --- | --- | --- | --- | --- |
{chr(10).join(runs)}

## Module names in the untrimmed files

Measured from each run's final file before trimming. Numbers in names are replaced: `{{i}}` the block of
`input_blocks`/`output_blocks`, `{{t}}` the transformer block, `{{l}}` the text-encoder layer; "numbers" lists
the values of the first placeholder (and, for two, which values of the second go with them).

{chr(10).join(pattern_sections)}
## Notes

NOTES

## Commands

Run from the repository root.

{chr(10).join(sections)}"""
    (HERE / "README.md").write_text(readme.replace("\nNOTES\n", "\n" + NOTES.strip() + "\n", 1))
    log("wrote manifest.json and README.md")


# What the runs showed (README "Notes"); kept by hand.
NOTES = """
- **sd-scripts names SDXL UNet modules by its original (ldm) UNet**, not by diffusers paths: `input_blocks_{i}_0_…`
  (resnet: `in_layers_2`, `out_layers_3`, `emb_layers_1`, `skip_connection`; downsampler `input_blocks_{3,6}_0_op`),
  `input_blocks_{i}_1_…` (attention: `proj_in`, `proj_out`, `transformer_blocks_{t}_attn1_to_q` …), `middle_block_{0,1,2}_…`,
  `output_blocks_{i}_{0,1}_…`, upsamplers `output_blocks_{2,5}_2_conv`. The text encoders are `lora_te1_…` (ViT-L) and
  `lora_te2_…` (bigG), both `text_model_encoder_layers_{l}_…` (transformers 4 paths). "Module names in the
  untrimmed files" above lists every pattern with its numbers.
- **TE1's last layer never learns.** SDXL conditions on TE1's penultimate hidden state, so layer 11's output is unused:
  sd-scripts still creates and saves its 6 modules (`lora_te1_text_model_encoder_layers_11_…`), but their `lora_up`
  stay zero in `lora_unet_te` and `locon` (the trimmed files keep layer 0 only). TE2's last layer does learn (through
  the pooled output and `text_projection`). Every UNet up weight is non-zero: at 64 px the mid block sees 2×2 latents
  (4 tokens), unlike SD 1.5's single token.
- **LyCORIS' default preset adapts no `conv_in`/`conv_out`/`time_embed`/`label_emb` on SDXL.** Its target *names*
  (`conv_in`, `conv_out`, `time_embedding.linear_1/_2`) are diffusers paths; sd-scripts' SDXL UNet calls those modules
  `input_blocks.0.0`, `out.2`, `time_embed.0/2` and `label_emb.0.0/2`, so LyCORIS 4.1.3 logs "UNet: No modules
  matched the following target names/patterns: ['conv_in', 'conv_out', 'time_embedding.linear_1', …]" and the files
  have only the block modules (the same set as `locon`, plus what LyCORIS adds by module class). Unlike SD 1.5, the
  default preset runs: sd-scripts' SDXL UNet has no `TimestepEmbedding` class, so no duplicate names.
- **Memory.** `--mixed_precision no` keeps the whole model in fp32, about 14 GB (UNet 10.3, TE2 2.8, TE1 0.5, VAE
  0.3). The LoRA/LoCon runs peaked at 14.9–15.9 GiB RSS (counting the mmap'ed model files' pages too). LoKr and LoHa
  rebuild every adapted weight in fp32 in the forward pass: with plain settings both were killed by this script's
  memory guard in their first step (17 GiB RSS at the time), and so was LoKr with `--gradient_checkpointing` (after
  265 s). `lokr` was made with `bypass_mode=True` (LyCORIS computes `W x + ΔW x` without building `W + ΔW`; the
  parameters and the saved file are the same, and `ss_network_args` records it) and `--gradient_checkpointing`:
  14.1 GiB anonymous memory, 12 minutes on the shared 2 CPU cores.
- **`loha` was not made here.** With the same `bypass_mode=True --gradient_checkpointing` it passed 16 GiB of
  anonymous memory within about a minute of its first step (81 s after start; 17.4 GiB RSS), and again when
  training the UNet only (`--network_train_unet_only --cache_text_encoder_outputs`, 112 s, 17.9 GiB RSS). LyCORIS'
  LoHa bypass still builds `ΔW` for convolutions, but that alone does not explain the growth; it was not profiled.
  On a machine with more memory, raise `MEMORY_LIMIT_BYTES` and run `make_files.py --only loha`.
- All runs pass `--max_data_loader_n_workers 0` so that no worker is forked from a 15 GB process; none of the
  memory settings changes the files' keys or shapes.
- The random model (`build_sdxl_random`) is written one tensor at a time from meta-device models: 23 s and 1.25 GB
  peak RSS on this machine, 6.9 GB on disk (fp16). sd-scripts' transformers 4.54 loads both text encoders with no
  missing or unexpected keys.
- The tokenizer cache is read from `--tokenizer_cache_dir` for both tokenizers ("load tokenizer from cache: …
  openai_clip-vit-large-patch14" and "… laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"); sd-scripts forces tokenizer 2's
  `pad_token_id` to 0 (`"!"`), which is also what the cache's tokenizer 2 says.
- As with SD 1.5: the checkout has no `.git` of its own and sits inside this repository, so `ss_sd_scripts_commit_hash`
  and `modelspec.implementation_version` hold epochscope's HEAD at build time, not sd-scripts' commit. With a
  diffusers folder as the base model, `ss_sd_model_hash` and `ss_new_sd_model_hash` are the string `IsADirectory`.
  SDXL files carry `ss_base_model_version` `sdxl_base_v1-0` and `modelspec.architecture`
  `stable-diffusion-xl-v1-base/lora`. Every tensor is fp16, `alpha` included.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(NETWORKS), help="rebuild only these networks")
    ap.add_argument("--docs-only", action="store_true", help="only regenerate manifest.json and README.md")
    ap.add_argument("--trim-only", action="store_true",
                    help="trim the files here again from .cache/kohya_sdxl_work/out (see KEEP_PREFIXES), then the docs")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    if args.trim_only:  # from the untrimmed originals in the work folder where they are still there
        for path in sorted(HERE.glob("*/*.safetensors")):
            original = WORK / "out" / path.parent.name / path.name
            if original.exists():
                shutil.copy2(original, path)
            trim(path)
    elif not args.docs_only:
        tok, data = prepare()
        for name in args.only or NETWORKS:
            results[name] = train(name, tok, data)
    write_docs(results)


if __name__ == "__main__":
    main()
