"""Rebuild the small real sd-scripts / LyCORIS LoRA files in this folder (for maintainers; not run by tests).

Run with the project venv from the repository root:

    SD_SCRIPTS_DIR=/path/to/sd-scripts SD_SCRIPTS_PYTHON=/path/to/sd-venv/bin/python \\
        .venv/bin/python tests/data/kohya_sd15/make_files.py [--only lora_unet_te locon ...] [--docs-only]

Defaults: third_party/sd-scripts and third_party/sd-venv/bin/python. sd-scripts is only ever run as a child
process with its own Python. Every network is trained on CPU for 2 optimizer steps (1 image, batch 1,
2 epochs, a file every epoch) on the random-weight SD-1.5 model from tests/_sd_scripts_helpers.py, with a
learning rate high enough (1e-2) that the zero-initialised up/second factors become non-zero. The work folder
(model, tokenizer cache, dataset, sd-scripts outputs and logs) is .cache/kohya_sd15_work; only the
.safetensors files listed in NETWORKS are copied here, then manifest.json and README.md are regenerated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
WORK = REPO / ".cache" / "kohya_sd15_work"
MODEL = REPO / ".cache" / "sd15-random"
SD_DIR = Path(os.environ.get("SD_SCRIPTS_DIR", REPO / "third_party" / "sd-scripts"))
SD_PY = Path(os.environ.get("SD_SCRIPTS_PYTHON", REPO / "third_party" / "sd-venv" / "bin" / "python"))
SD_COMMIT = os.environ.get("SD_SCRIPTS_COMMIT", "48d368fa")  # the checkout has no .git; say which commit it is
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "CUDA_VISIBLE_DEVICES": ""}

# LyCORIS 4.1.3's default preset ("full") lists both the module class TimestepEmbedding (for Anima) and the names
# time_embedding.linear_1/_2; sd-scripts' SD 1.x UNet has a TimestepEmbedding, so each of its two Linears is
# made twice and LycorisNetworkKohya stops with "AssertionError: duplicated lora name:
# lora_unet_time_embedding_linear_1". This preset is "full" restricted to the SD 1.x/CLIP targets (the same
# modules, each once).
PRESET = HERE / "lycoris_sd15_preset.toml"
PRESET_TEXT = """\
# LyCORIS 4.1.3's "full" preset without the TimestepEmbedding class (see make_files.py)
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
"""
LYCORIS_PRESET_ARG = f"preset={PRESET.relative_to(REPO).as_posix()}"

# name: (kind, network_module, extra args, trains_unet, trains_text_encoder)
NETWORKS: dict[str, tuple[str, str, list[str], bool, bool]] = {
    "lora_unet_te": ("lora", "networks.lora", [], True, True),
    "lora_unet_only": ("lora", "networks.lora", ["--network_train_unet_only"], True, False),
    "lora_te_only": ("lora", "networks.lora", ["--network_train_text_encoder_only"], False, True),
    "locon": ("locon", "networks.lora", ["--network_args", "conv_dim=2", "conv_alpha=1"], True, True),
    "dylora": ("dylora", "networks.dylora", ["--network_args", "unit=1"], True, True),
    "loha": ("loha", "lycoris.kohya", ["--network_args", "algo=loha", "conv_dim=2", "conv_alpha=1", "use_tucker=True",
                                       LYCORIS_PRESET_ARG], True, True),
    "lokr": ("lokr", "lycoris.kohya", ["--network_args", "algo=lokr", "conv_dim=2", "conv_alpha=1",
                                       LYCORIS_PRESET_ARG], True, True),
    # at dim 2 every LoKr module factorises its second factor (lokr_w2_a/_b); full_matrix=True keeps lokr_w2 whole
    "lokr_full": ("lokr", "lycoris.kohya", ["--network_args", "algo=lokr", "conv_dim=2", "conv_alpha=1",
                                            "full_matrix=True", LYCORIS_PRESET_ARG], True, True),
    # DoRA materialises every adapted weight in fp32 on CPU: without gradient checkpointing the run reached 11.6 GB
    # and was OOM-killed on a 23 GB machine
    "dora": ("dora", "lycoris.kohya", ["--network_args", "algo=lora", "dora_wd=True", LYCORIS_PRESET_ARG,
                                       "--gradient_checkpointing"], True, True),
}
KEEP_EPOCH_FILE = {"lora_unet_te"}  # also keep <name>-000001.safetensors (ss_epoch 1)


def log(msg: str) -> None:
    print(f"[make_files] {msg}", flush=True)


def prepare() -> tuple[Path, Path]:
    """The random SD-1.5 model, sd-scripts' tokenizer cache and a one-image kohya dataset."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from _sd_scripts_helpers import build_sd15_random

    build_sd15_random(MODEL)
    PRESET.write_text(PRESET_TEXT)
    return tokenizer_cache_and_dataset(WORK)


def tokenizer_cache_and_dataset(work: Path) -> tuple[Path, Path]:
    """sd-scripts' tokenizer cache (SD 1.x and SDXL tokenizers) and a one-image kohya dataset, in ``work``."""
    tok = work / "tokenizer-cache"
    subprocess.run([sys.executable, "-m", "trainer", "tokenizer-cache", str(tok)], cwd=REPO, env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    data = work / "data"
    sub = data / "1_subject"
    if not (sub / "img.png").exists():
        from PIL import Image, ImageDraw

        sub.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (64, 64), (40, 60, 200))
        ImageDraw.Draw(img).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
        img.save(sub / "img.png")
        (sub / "img.txt").write_text("a red circle, sks")
    return tok, data


def command(name: str, tok: Path, data: Path) -> list[str]:
    _, module, extra, _, _ = NETWORKS[name]
    return [str(SD_PY), str(SD_DIR / "train_network.py"),
            "--pretrained_model_name_or_path", str(MODEL), "--train_data_dir", str(data),
            "--resolution", "64,64", "--caption_extension", ".txt", "--train_batch_size", "1",
            "--output_dir", str(WORK / "out" / name), "--output_name", name, "--save_model_as", "safetensors",
            "--network_module", module, "--network_dim", "2", "--network_alpha", "1", *extra,
            "--learning_rate", "1e-2", "--optimizer_type", "AdamW", "--lr_scheduler", "constant",
            "--mixed_precision", "no", "--save_precision", "fp16", "--seed", "0",
            "--max_train_epochs", "2", "--save_every_n_epochs", "1", "--tokenizer_cache_dir", str(tok)]


def shown(cmd: list[str]) -> str:
    """The command as the README shows it: machine paths replaced by names."""
    s = shlex.join(cmd)
    for path, name in ((str(SD_PY), "$SD_SCRIPTS_PYTHON"), (str(SD_DIR), "$SD_SCRIPTS_DIR"),
                       (str(WORK), ".cache/kohya_sd15_work"), (str(MODEL), ".cache/sd15-random")):
        s = s.replace(path, name)
    return s


def train(name: str, tok: Path, data: Path) -> dict:
    out = WORK / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = command(name, tok, data)
    log(f"{name}: {shown(cmd)}")
    with open(out / "train.log", "w") as logf:
        rc = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=logf, stderr=subprocess.STDOUT).returncode
    result = {"command": shown(cmd)}
    dest = HERE / name
    shutil.rmtree(dest, ignore_errors=True)
    final = out / f"{name}.safetensors"
    if rc != 0 or not final.exists():
        tail = (out / "train.log").read_text(errors="replace").splitlines()[-25:]
        errors = [line for line in tail if re.search(r"Error|error:|Exception", line)] or tail[-3:]
        result["error"] = f"exit code {rc}: " + " | ".join(e.strip() for e in errors[-3:])
        log(f"{name}: FAILED {result['error']}")
        return result
    dest.mkdir()
    shutil.copy2(final, dest / final.name)
    trim(dest / final.name)
    if name in KEEP_EPOCH_FILE:
        shutil.copy2(out / f"{name}-000001.safetensors", dest / f"{name}-000001.safetensors")
        trim(dest / f"{name}-000001.safetensors")
    log(f"{name}: ok")
    return result


# Files kept in the repository stay small: a file over TRIM_ABOVE bytes keeps only the modules of one
# text-encoder layer and of the UNet's first down block plus conv_in / time_embedding (every kind of layer
# the networks adapt: linear, 1x1 and 3x3 convs, resnet, sampler). Each kept tensor and the sd-scripts
# metadata are byte-for-byte what the tool wrote; the file says it was trimmed.
TRIM_ABOVE = 1_500_000
KEEP_PREFIXES = ("lora_te_text_model_encoder_layers_0_", "lora_unet_down_blocks_0_", "lora_unet_conv_in",
                 "lora_unet_time_embedding_")


def trim(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    if path.stat().st_size <= TRIM_ABOVE:
        return
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    state = load_file(str(path))
    kept = {k: v for k, v in state.items() if k.partition(".")[0].startswith(KEEP_PREFIXES)}
    meta["epochscope_test_trimmed"] = (f"kept {len(kept)} of {len(state)} keys: modules starting with "
                                       + ", ".join(KEEP_PREFIXES))
    tmp = path.with_name(path.name + ".tmp")
    save_file(kept, str(tmp), metadata=meta)
    os.replace(tmp, path)


def describe(path: Path) -> dict:
    """Key count, key families and the ss_* metadata of one file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        meta = f.metadata() or {}
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in keys})
    families = Counter()
    for k in keys:
        module, _, suffix = k.partition(".")
        side = "lora_te" if module.startswith("lora_te") else "lora_unet" if module.startswith("lora_unet") else module
        families[f"{side}_….{suffix}"] += 1
    return {"keys": len(keys), "families": dict(sorted(families.items())), "dtypes": dtypes,
            **{m: meta.get(m) for m in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                                        "ss_epoch", "ss_steps")}}


def file_entry(path: Path, here: Path, kind: str, module: str, unet: bool, te: bool,
               describe_file=None) -> tuple[dict, str]:
    """A kept file's manifest entry and its row in the README's table (``describe_file``: default ``describe``)."""
    d = (describe_file or describe)(path)
    rel = path.relative_to(here).as_posix()
    entry = {"path": rel, "kind": kind, "network_module": module, "trains_unet": unet, "trains_text_encoder": te,
             "ss_epoch": int(d["ss_epoch"]), "ss_steps": int(d["ss_steps"]), "keys": d["keys"],
             "bytes": path.stat().st_size}
    fam = "<br>".join(f"`{k}` ×{v}" for k, v in d["families"].items())
    row = (f"| `{rel}` | {kind} | {d['keys']} | {fam} | `{d['ss_network_module']}` | "
           f"`{d['ss_network_args'] or '-'}` | {d['ss_epoch']} | {d['ss_steps']} | {path.stat().st_size / 1e6:.2f} MB |")
    return entry, row


def package_versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['torch', 'transformers', 'diffusers', 'accelerate', 'lycoris_lora']}))")
    return json.loads(subprocess.run([str(SD_PY), "-c", code], capture_output=True, text=True, check=True).stdout)


def write_docs(results: dict[str, dict]) -> None:
    old = json.loads((HERE / "manifest.json").read_text()) if (HERE / "manifest.json").exists() else {}
    old_cmds = {e["name"]: e for e in old.get("networks", [])}
    versions = package_versions()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    manifest = {"sd_scripts_commit": SD_COMMIT, "packages": versions, "date": date,
                "base_model": "tests/_sd_scripts_helpers.py build_sd15_random (random SD-1.5 weights, fp16)",
                "files": [], "networks": []}
    rows, sections = [], []
    for name, (kind, module, extra, unet, te) in NETWORKS.items():
        res = results.get(name) or old_cmds.get(name) or {"command": shown(command(name, WORK / "tokenizer-cache",
                                                                                    WORK / "data"))}
        manifest["networks"].append({"name": name, "kind": kind, "command": res["command"],
                                     **({"error": res["error"]} if res.get("error") else {})})
        sections.append(f"### `{name}/`\n\n```bash\n{res['command']}\n```\n")
        if res.get("error"):
            sections.append(f"**Not made.** {res['error']}\n")
            continue
        for path in sorted((HERE / name).glob("*.safetensors")):
            entry, row = file_entry(path, HERE, kind, module, unet, te)
            manifest["files"].append(entry)
            rows.append(row)
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    readme = f"""# Real sd-scripts / LyCORIS LoRA files for SD 1.5 (test data)

Made on {date} by `make_files.py` (in this folder; rebuilds everything) with a real kohya-ss sd-scripts
`train_network.py` at commit {SD_COMMIT}, in its own venv: {vers}. CPU only.

Base model: the SD-1.5-architecture diffusers folder with random weights from `tests/_sd_scripts_helpers.py`
(`.cache/sd15-random`). Dataset: one 64×64 image (`1_subject/img.png`, caption `a red circle, sks`),
batch 1, 2 epochs = 2 optimizer steps, AdamW, constant learning rate 1e-2 (so the zero-initialised up / second
factors are non-zero), `--mixed_precision no --save_precision fp16 --seed 0`, network dim 2, alpha 1, a file
every epoch. The weights mean nothing; the key names, shapes, dtypes and metadata are exactly what sd-scripts
and LyCORIS write. Only the final file of each run is kept, plus the epoch-1 file of `lora_unet_te`.
To keep the repository small, a file over {TRIM_ABOVE:,} bytes keeps only the modules of text-encoder layer 0,
the UNet's first down block, `conv_in` and `time_embedding` (every kind of adapted layer: linear, 1×1 and 3×3
convs, resnet, sampler); the kept tensors and the metadata are unchanged, and the metadata key
`epochscope_test_trimmed` says what was kept (`make_files.py`, `trim`).
`manifest.json` lists every file (path, kind, trains_unet, trains_text_encoder, ss_epoch, ss_steps, keys).

`$SD_SCRIPTS_DIR` is the sd-scripts checkout, `$SD_SCRIPTS_PYTHON` its venv's Python;
`.cache/kohya_sd15_work/tokenizer-cache` was made by `python -m trainer tokenizer-cache`.
Environment: `HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=`.

## What each file holds

Key families: `lora_unet_…`/`lora_te_…` stand for every module name of that side; ×N is how many keys.

| file | kind | keys | key families | ss_network_module | ss_network_args | ss_epoch | ss_steps | size |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Notes

- **LyCORIS needs a preset here.** With lycoris_lora 4.1.3's default preset (`full`), every `lycoris.kohya` run on
  SD 1.5 stops before training with `AssertionError: duplicated lora name: lora_unet_time_embedding_linear_1`
  (`lycoris/kohya.py`, `LycorisNetworkKohya.__init__`): `full` targets both the module class `TimestepEmbedding`
  (added for Anima) and the names `time_embedding.linear_1`/`_2`, and sd-scripts' SD 1.x UNet has a
  `TimestepEmbedding`. `loha`, `lokr`, `lokr_full` and `dora` therefore pass `preset=tests/data/kohya_sd15/lycoris_sd15_preset.toml`
  (in this folder): `full` restricted to the SD 1.x / CLIP targets, which adapts the same modules, each once
  (Transformer2DModel, ResnetBlock2D, Downsample2D, Upsample2D, conv_in, conv_out, time_embedding.linear_1/_2;
  CLIPAttention/CLIPMLP). `ss_network_args` records that preset path.
- LyCORIS adapts 3×3 convolutions by default (`conv_dim` defaults to the network dim), so `dora` has conv modules too.
  `loha` uses `use_tucker=True`, so its 3×3 convolutions carry `hada_t1`/`hada_t2`; `lokr` does not (its 3×3
  second factors are flattened: `lokr_w2_b` is `[dim, in/f × 3 × 3]`).
- At dim 2 every LoKr module splits its second factor into `lokr_w2_a`/`lokr_w2_b`; `lokr_full` (an extra network,
  `full_matrix=True`) keeps it whole as `lokr_w2`, the other layout LoKr files use.
- `networks.dylora` saves plain LoRA keys (`lora_down.weight` `[dim, in]`, `lora_up.weight`, `alpha`); only
  `ss_network_module` and `ss_network_args` tell it apart.
- `dora` adds `--gradient_checkpointing`: DoRA materialises every adapted weight in fp32, and without it the CPU run
  reached 11.6 GB and was OOM-killed on the 23 GB build machine. It does not change what the file holds.
- At 64 px the mid block sees 1×1 latents, so its self-attention has a single token and `attn1_to_q`/`attn1_to_k`
  get no gradient: those two modules keep their zero-initialised up / second factor. Every other up weight is non-zero.
- The sd-scripts checkout used has no `.git` of its own; its commit ({SD_COMMIT}) is as recorded when it was checked
  out. It sits inside this repository, so sd-scripts' own `git rev-parse HEAD` found *this* repository: the files'
  `ss_sd_scripts_commit_hash` and `modelspec.implementation_version` hold epochscope's HEAD at build time, not
  sd-scripts' commit.

## Commands

Run from the repository root.

{chr(10).join(sections)}"""
    (HERE / "README.md").write_text(readme)
    log("wrote manifest.json and README.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(NETWORKS), help="rebuild only these networks")
    ap.add_argument("--docs-only", action="store_true", help="only regenerate manifest.json and README.md")
    ap.add_argument("--trim-only", action="store_true", help="trim the files here (see TRIM_ABOVE), then the docs")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    if args.trim_only:
        for path in sorted(HERE.glob("*/*.safetensors")):
            trim(path)
    elif not args.docs_only:
        tok, data = prepare()
        for name in args.only or NETWORKS:
            results[name] = train(name, tok, data)
    write_docs(results)


if __name__ == "__main__":
    main()
