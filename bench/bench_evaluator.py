"""The evaluator daemon against plain generation and against the seed's design, side by side in one run.

1. Plain generation: the same images (prompts, seeds, steps, CFG, size) made by calling the diffusers
   pipeline directly, in this process, models loaded once: the floor for scoring a checkpoint. It runs
   right before the daemon gets each checkpoint, so the ratio is taken checkpoint by checkpoint.
2. The daemon's wall time per fully scored checkpoint: from the moment a checkpoint file is complete
   until its state entry is ``done`` and the report has been rewritten after it, so swap, generation,
   metrics and every file (samples, metrics.json, state, summary, TensorBoard, report) are in it.
   Also the detection latency (complete -> scoring starts) against a 30 s polling loop given the same
   completion times (its latency is the wait until its next tick).
3. A fresh process per checkpoint (`python -m evaluator run` for each new file: loads the pipeline and
   CLIP every time).
4. The trainer's steps/s alone, and with an evaluator watching its folder on the same device (on the CPU each
   gets half the cores, as run_pair.sh gives them), in
   ``concurrent`` and ``pause-trainer`` mode (the pause applies only when both share a GPU; on the CPU
   the two modes are the same run twice, which shows the noise).

  python bench/bench_evaluator.py [--checkpoints 4]       # the CPU demo model, 8 samples x 25 steps, 64 px
  python bench/bench_evaluator.py --model demo-sdxl       # the tiny SDXL-layout demo model, 64 px
  python bench/bench_evaluator.py --sd15                  # SD-1.5 architecture, random weights, 512 px
  python bench/bench_evaluator.py --sdxl                  # SDXL 1.0 architecture, random weights, 1024 px
  python bench/bench_evaluator.py --sd15 --resolution 64 --steps 2   # the same path, small enough for a CPU

With --sd15/--sdxl (= --model sd15/sdxl) the base is built once, offline, under .cache/ (SDXL: 6.5 GB), the
CLIP for the metrics is a random ViT-B-32 from a local file, and on CUDA the trainer trains in bf16 on the
GPU (SDXL with gradient checkpointing). bench/gpu_bench.sh runs these on a GPU machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from _bench_models import MODELS, add_model_arguments, base_for, random_vit_b32, resolution_for  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
POLL_PERIOD_S = 30.0


def wait_for(cond, timeout=1800, every=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError


def write_config(tmp: Path, args, name: str = "c", out: str = "src", epochs: int | None = None) -> Path:
    from conftest import write_demo_config

    cfg = write_demo_config(tmp / f"{name}.toml", tmp / out, epochs=epochs or args.checkpoints, samples=args.samples,
                            steps=args.steps)
    text = cfg.read_text().replace("resolution = 64", f"resolution = {args.resolution}")
    if args.dtype != "auto":
        text += f'dtype = "{args.dtype}"\n'  # the [evaluation] table is the template's last
    if args.batch_size:
        text += f"batch_size = {args.batch_size}\n"
    text = text.replace('base = "demo:tiny"', f'base = "{base_for(args.model)}"')
    if args.model in ("sd15", "sdxl"):
        import torch

        text = text.replace('clip_model = "demo:tiny-clip"',
                            f'clip_model = "ViT-B-32"\nclip_pretrained = "{random_vit_b32()}"')
        if torch.cuda.is_available():
            text = text.replace("seed = 42", 'seed = 42\nmixed_precision = "bf16"\ndevice = "cuda"'
                                + ("\ngradient_checkpointing = true" if args.model == "sdxl" else ""))
    cfg.write_text(text)
    return cfg


def trainer_rate(cfg: Path, device: str, sharing: str | None) -> tuple[float, int]:
    """The trainer's steps/s over a run (from its own progress events, warm-up steps left out), alone
    (``sharing=None``) or with `evaluator watch` on its folder in that gpu_sharing mode."""
    import json

    from shared.config import load_config

    folder = Path(load_config(cfg).output.dir)
    ev = None
    env = ENV
    if sharing is not None and device == "cpu" and "OMP_NUM_THREADS" not in env:
        env = {**ENV, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}  # as run_pair.sh splits them
    if sharing is not None:  # started first, as run_pair.sh does: it loads its models while the trainer starts
        folder.mkdir(parents=True, exist_ok=True)
        ev = subprocess.Popen([sys.executable, "-m", "evaluator", "watch", "--dir", str(folder), "--device", device,
                               "--gpu-sharing", sharing, "--exit-when-done", "--rescan-interval", "1"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new"], cwd=REPO, env=env,
                       check=True, capture_output=True)
    finally:
        if ev is not None:
            try:
                ev.wait(timeout=600)
            except subprocess.TimeoutExpired:
                ev.terminate()
                ev.wait(timeout=60)
    log = (folder / "training.log").read_text().splitlines()
    events = [json.loads(x.split(" ", 1)[1]) for x in log if x.startswith("@@epochscope ")]
    prog = [e for e in events if e["event"] == "progress"]
    first, last = prog[min(2, len(prog) - 2)], prog[-1]  # skip warm-up steps
    return (last["step"] - first["step"]) / (last["elapsed"] - first["elapsed"]), last["step"]


class PlainGeneration:
    """The evaluation's images generated by a plain pipeline call per batch, models loaded once, here: the
    floor a daemon's scoring is compared with."""

    def __init__(self, cfg: Path, device: str):
        from evaluator.pipeline import load_pipeline, pick_device, pick_dtype, set_scheduler
        from evaluator.settings import settings_for
        from shared.config import load_config

        settings = settings_for(load_config(cfg))
        self.device = pick_device(device)
        self.pipe = load_pipeline(settings.base, self.device, pick_dtype(settings.dtype, self.device))
        set_scheduler(self.pipe, settings.scheduler)
        self.gen = settings.generation
        first = self.gen.samples[0]
        self.what = (f"{len(self.gen.samples)} samples x {first.steps} steps, {first.width} px, "
                     f"CFG {first.guidance_scale}, {self.pipe.unet.dtype}, {self.device}")
        self.run()  # warm-up

    def run(self) -> float:
        """Seconds to generate every sample (the images come back as numpy arrays, so the device is done)."""
        import torch

        from evaluator.pipeline import _batches

        t0 = time.perf_counter()
        for idx in _batches(self.gen):
            specs = [self.gen.samples[i] for i in idx]
            with torch.no_grad():
                self.pipe(prompt=[s.prompt for s in specs], negative_prompt=[s.negative_prompt for s in specs],
                          num_inference_steps=specs[0].steps, guidance_scale=specs[0].guidance_scale,
                          height=specs[0].height, width=specs[0].width, output_type="np",
                          generator=[torch.Generator("cpu").manual_seed(s.seed) for s in specs])
        return time.perf_counter() - t0

    def close(self) -> None:
        """Give the pipeline's memory back, so the trainer runs that follow get the whole device."""
        import gc

        import torch

        self.pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    add_model_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="evaluation.batch_size, for the daemon and the plain generation alike (default: all at once)")
    ap.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                    help="the evaluator's and the plain generation's (auto: bf16/fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true",
                    help="the daemon runs with evaluation.compile = true (the UNet compiled while it scores the "
                         "baseline); the plain generation stays eager, the fresh processes do not compile")
    ap.add_argument("--train-epochs", type=int, default=8, help="epochs of each trainer steps/s run (0: skip them)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    args.resolution = resolution_for(args.model, args.resolution)
    from shared.jsonio import read_model, write_model
    from shared.records import CheckpointMetrics, EvaluationState, Params, TrainerStatus
    from shared.trial import Trial

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    n = args.checkpoints
    cfg = write_config(tmp, args)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "trainer", "run", "--config", str(cfg), "--new"], cwd=REPO, env=ENV,
                   check=True, capture_output=True)
    train_s = time.monotonic() - t0
    src = Trial(tmp / "src")
    ckpts = [c.path for c in src.checkpoints("lora")]

    def fresh_trial(name: str, compile: bool = False) -> Trial:
        t = Trial(tmp / name)
        t.root.mkdir()
        params = read_model(src.params_path, Params)
        params.config.evaluation.compile = compile
        write_model(t.params_path, params)
        st = read_model(src.status_path, TrainerStatus)
        st.state = "running"
        write_model(t.status_path, st)
        return t

    # Each checkpoint in turn: a plain generation here, then the daemon scores the checkpoint (this process
    # idle), then a fresh `evaluator run` process scores it in another trial folder. The three measurements
    # of a checkpoint are adjacent in time, so a machine whose load changes affects them alike.
    plain_gen = PlainGeneration(cfg, args.device)
    t = fresh_trial("daemon", compile=args.compile)
    t2 = fresh_trial("per-process")
    subprocess.run([sys.executable, "-m", "evaluator", "run", "--dir", str(t2.root), "--device", args.device],
                   cwd=REPO, env=ENV, check=True, capture_output=True)  # its baseline, not counted
    log_path = tmp / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "evaluator", "watch", "--dir", str(t.root), "--device",
                                 args.device], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    report = t.evaluations_dir / "report.html"

    def entry(name: str):
        if not t.evaluation_state_path.exists():
            return None
        try:
            state = read_model(t.evaluation_state_path, EvaluationState)
        except Exception:  # noqa: BLE001 - read while replaced: try again
            return None
        return next((e for e in state.entries.values() if e.name == name and e.status == "done"), None)

    def fully_scored(name: str):
        """Done in the ledger, and the report rewritten after it: every file of the checkpoint is on disk."""
        e = entry(name)
        if e is None or e.finished_at is None or not report.exists():
            return None
        return e if report.stat().st_mtime >= e.finished_at.timestamp() - 0.01 else None

    plain, wall, latency, process_each, complete_at = [], [], [], [], {}
    try:
        t0 = time.monotonic()
        wait_for(lambda: fully_scored("baseline"))
        baseline_s = time.monotonic() - t0
        started = time.time()
        for path in ckpts:
            plain.append(plain_gen.run())
            time.sleep(1.0)
            tmp_path = t.root / f".{path.name}.part"  # written to a temp name, then renamed: complete at once
            shutil.copy2(path, tmp_path)
            complete_at[path.stem] = time.time()
            os.replace(tmp_path, t.root / path.name)
            e = wait_for(lambda: fully_scored(path.stem))
            wall.append(time.time() - complete_at[path.stem])
            latency.append(e.started_at.timestamp() - complete_at[path.stem])
            shutil.copy2(path, t2.root / path.name)
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "evaluator", "run", "--dir", str(t2.root), "--device",
                            args.device], cwd=REPO, env=ENV, check=True, capture_output=True)
            process_each.append(time.monotonic() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    plain_gen.close()
    polled = [POLL_PERIOD_S - ((v - started) % POLL_PERIOD_S) for v in complete_at.values()]
    timings = [read_model(next(t.evaluations_dir.glob(f"{p.stem}@*")) / "metrics.json", CheckpointMetrics).timings
               for p in ckpts]

    med = statistics.median
    later = slice(1, None) if n > 1 else slice(None)
    ratios = [w / p for w, p in zip(wall, plain)]
    print(f"{MODELS[args.model]}: {n} checkpoints, {plain_gen.what}; {os.cpu_count()} CPU cores (trained in {train_s:.0f} s)"
          + (f"; daemon with evaluation.compile = true (start to baseline scored, compile included: {baseline_s:.0f} s)"
             if args.compile else ""))
    print(f"plain diffusers generation of the same images: median {med(plain):.2f} s "
          f"(each: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"daemon, wall time per fully scored checkpoint (file complete -> report rewritten): first {wall[0]:.2f} s, "
          f"then median {med(wall[later]):.2f} s (each: {', '.join(f'{w:.2f}' for w in wall)})")
    parts = {k: med([x.get(k, 0.0) for x in timings]) for k in ("swap", "generate", "metrics", "total")}
    print("  of which in score() (metrics.json timings, median): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    print(f"ratio daemon / plain generation, checkpoint by checkpoint: first {ratios[0]:.2f}x, then median "
          f"{med(ratios[later]):.2f}x (each: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"fresh process per checkpoint: median {med(process_each):.2f} s -> "
          f"{med(process_each) / med(wall[later]):.1f}x "
          f"the daemon (each: {', '.join(f'{x:.2f}' for x in process_each)})")
    print(f"detection latency: daemon median {med(latency) * 1000:.0f} ms (max {max(latency) * 1000:.0f} ms); "
          f"30 s polling loop median {med(polled):.1f} s")
    if args.train_epochs:
        from evaluator.pipeline import pick_device

        device = pick_device(args.device)
        rates = {}
        for label, sharing in (("alone", None), ("with the evaluator, concurrent", "concurrent"),
                               ("with the evaluator, pause-trainer", "pause-trainer")):
            c = write_config(tmp, args, name=f"train-{sharing or 'alone'}", out=f"train-{sharing or 'alone'}",
                             epochs=args.train_epochs)
            rates[label], steps = trainer_rate(c, device, sharing)
        alone = rates["alone"]
        print(f"trainer steps/s ({steps} steps, evaluator on {device}): "
              + "; ".join(f"{k} {v:.2f} ({v / alone:.2f}x)" for k, v in rates.items())
              + ("" if device.startswith("cuda") else " [CPU: alone on every core; with the evaluator each gets half,"
                                                        " as under run_pair.sh; the pause applies to a shared GPU only]"))
    if args.keep:
        print(f"kept {tmp} (daemon log: {log_path})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
