"""The built-in backend's training process (started by the supervisor, never by users).

``python -m trainer.builtin.worker --params TRIAL/params.json [--resume STATE] [--target-steps N]
[--target-epochs N]``. SIGINT means: finish the current optimizer step, save a checkpoint and its
state, exit 0. Noise and timesteps come from a generator seeded by (seed, step), and batches from
(seed, epoch), so a resumed run is step-for-step the run it continues.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Callable
from datetime import timezone
from pathlib import Path

from shared.errors import EpochscopeError, disk_full
from shared.jsonio import read_model
from shared.naming import epoch_stem, step_stem
from shared.records import Params
from shared.trial import Trial
from trainer.builtin import dataset as ds
from trainer.builtin.events import emit, fail, say
from trainer.builtin.nonfinite import NonFiniteSteps
from trainer.outputs import retire_final


#: Key prefixes of the UNet's, text encoder's and SDXL's second text encoder's LoRA weights in a state folder.
STATE_PREFIXES = ("unet.", "te.", "te2.")


class _StopFlag:
    requested = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EpochscopeError(f"training.device {name!r} is not a torch device (auto, cpu, cuda, cuda:1)") from None


def _quiet_loading() -> None:
    """No loading progress bars in training.log."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainer.builtin.worker")
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--resume", type=Path)
    parser.add_argument("--target-steps", type=int)
    parser.add_argument("--target-epochs", type=int)
    args = parser.parse_args(argv)
    stop = _StopFlag()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        params = read_model(args.params, Params)
        return train(params, Trial(args.params.parent), args.resume, args.target_steps, args.target_epochs, stop)
    except EpochscopeError as e:
        return fail(str(e))


def train(params: Params, trial: Trial, resume: Path | None, target_steps: int | None,
          target_epochs: int | None, stop: _StopFlag) -> int:
    import torch
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from shared.kohya_names import KohyaTable
    from trainer.builtin import lora_format, state
    from trainer.builtin.conditioning import TextConditioning, size_time_ids
    from trainer.builtin.models import load_components

    cfg = params.config
    tc, net = cfg.training, cfg.network
    device = pick_device(tc.device)
    if tc.train_batch_size < 1 or cfg.dataset.train_dir is None:
        raise EpochscopeError("dataset.train_dir is required for the builtin backend")
    from shared.demo_assets import resolve_demo

    items = ds.scan(resolve_demo(cfg.dataset.train_dir), cfg.dataset.caption_extension,
                    cfg.dataset.repeats_override, warn=say)
    say(f"dataset: {len(items)} images, {sum(i.repeats for i in items)} samples per epoch (with repeats)")
    loaded = [ds.load_training_image(item.image, cfg.dataset.resolution) for item in items]
    images = [im.pixels for im in loaded]

    torch.manual_seed(tc.seed)
    _quiet_loading()
    comp = load_components(cfg.model.base, cfg.model.family)
    family = comp.family
    use_amp = device.type == "cuda" and tc.mixed_precision != "no"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(tc.mixed_precision, torch.float32)
    weight_dtype = amp_dtype if use_amp else torch.float32
    no_half_vae = tc.no_half_vae if tc.no_half_vae is not None else family == "sdxl"
    vae_dtype = torch.float32 if no_half_vae else weight_dtype
    text_encoders = comp.text_encoders  # SD 1.x: [te]; SDXL: [te1, te2]
    for module in (comp.unet, *text_encoders, comp.vae):
        module.requires_grad_(False)
        module.to(device, dtype=vae_dtype if module is comp.vae else weight_dtype)
    # peft's own injection, which diffusers' and transformers' add_adapter wrap: transformers 5.25's wrapper
    # refuses every peft before 0.22, and PyPI's newest is 0.21.2 (2026-12-07).
    inject_adapter_in_model(LoraConfig(r=net.dim, lora_alpha=net.alpha, lora_dropout=net.dropout,
                                       target_modules=lora_format.UNET_TARGETS), comp.unet)
    if net.train_text_encoder:
        for te in text_encoders:
            inject_adapter_in_model(LoraConfig(r=net.dim, lora_alpha=net.alpha, lora_dropout=net.dropout,
                                               target_modules=lora_format.TEXT_ENCODER_TARGETS), te)
    for module in (comp.unet, *text_encoders):
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # LoRA weights train in fp32 under autocast
    if tc.gradient_checkpointing:
        comp.unet.enable_gradient_checkpointing()
    unet_params = [p for p in comp.unet.parameters() if p.requires_grad]
    # One group per trained text encoder; SDXL's second takes text_encoder_2_lr, else text_encoder_lr.
    te_lrs = [tc.text_encoder_lr, tc.text_encoder_2_lr or tc.text_encoder_lr]
    te_groups = [([p for p in te.parameters() if p.requires_grad], lr or tc.learning_rate)
                 for te, lr in zip(text_encoders, te_lrs)]
    te_params = [p for params_, _ in te_groups for p in params_]
    groups = [{"params": unet_params, "lr": tc.learning_rate}]
    groups += [{"params": params_, "lr": lr} for params_, lr in te_groups if params_]
    opt_name = tc.optimizer.lower()
    if opt_name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=tc.learning_rate, weight_decay=1e-2)
    elif opt_name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=tc.learning_rate)
    else:
        raise EpochscopeError(f"training.optimizer {tc.optimizer!r} is not supported by the builtin backend "
                              "(AdamW or SGD); sd-scripts supports more")

    samples_per_epoch = sum(i.repeats for i in items)
    batches_per_epoch = math.ceil(samples_per_epoch / tc.train_batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / tc.gradient_accumulation_steps)
    if target_steps is None and target_epochs is None:
        target_steps = tc.max_train_steps
        target_epochs = None if target_steps else tc.max_train_epochs
    if target_steps is not None:
        total_steps = target_steps
        total_epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        total_epochs = int(target_epochs)
        total_steps = total_epochs * steps_per_epoch
    counters = state.read_counters(resume) if resume is not None else None
    if resume is not None and counters is None:
        raise EpochscopeError(f"{resume} is not a complete training state of the builtin backend")
    schedule_steps = state.schedule_length(counters, total_steps)
    lr_scheduler = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.lr_warmup_steps,
                                 num_training_steps=schedule_steps)

    global_step = 0
    if resume is not None and counters is not None:
        if counters.steps_per_epoch != steps_per_epoch:
            raise EpochscopeError(f"{resume}: the dataset or batch size changed since this state was saved "
                                  f"({counters.steps_per_epoch} steps per epoch then, {steps_per_epoch} now)")
        weights = state.load_state(resume, optimizer, lr_scheduler)
        for prefix, module in zip(STATE_PREFIXES, (comp.unet, *text_encoders)):
            part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            if part:
                set_peft_model_state_dict(module, part)
        global_step = counters.step
        state.apply_schedule(optimizer, lr_scheduler)  # the next step's lr, from this run's schedule
        say(f"resumed from {resume} at step {global_step} (lr schedule over {schedule_steps} steps)")
    started_at = params.created_at.astimezone(timezone.utc).replace(tzinfo=None)
    trainable = unet_params + te_params
    kohya_table = KohyaTable.for_models(comp.unet, *text_encoders)
    trained = [(comp.unet, "unet")]
    if te_params:
        trained += list(zip(text_encoders, ("text_encoder", "text_encoder_2")))

    def write_checkpoint(stem: str, epoch: int) -> dict:
        """Write ``<stem>.safetensors`` from the live weights; returns the weights for its state."""
        tensors: dict = {}
        weights: dict = {}
        for (module, component), prefix in zip(trained, STATE_PREFIXES):
            peft_sd = get_peft_model_state_dict(module)
            tensors.update(lora_format.to_kohya(peft_sd, module, component, kohya_table, net.alpha))
            weights.update({f"{prefix}{k}": v for k, v in peft_sd.items()})
        path = trial.checkpoint_path(stem)
        if _written_before(path, global_step):
            say(f"keeping checkpoint {path.name}: written at this step before the run was interrupted")
        else:
            meta = lora_format.sd_scripts_metadata(
                output_name=cfg.output.name, epoch=epoch, step=global_step, num_epochs=total_epochs,
                dim=net.dim, alpha=net.alpha, learning_rate=tc.learning_rate, started_at=started_at,
                resolution=cfg.dataset.resolution, train_text_encoder=net.train_text_encoder, seed=tc.seed,
                num_train_images=samples_per_epoch, family=family)
            if stem == cfg.output.name:  # a continuation's final: the previous one keeps its epoch/step name
                kept = retire_final(trial, cfg.output.name, steps_per_epoch)
                if kept is not None:
                    say(f"kept the previous final checkpoint as {kept.name}")
            say(f"saving checkpoint: {path}")
            lora_format.save_atomic(tensors, meta, path)
        emit("checkpoint", path=str(path), epoch=epoch, step=global_step)
        return weights

    def save(stem: str, epoch: int) -> None:
        """The checkpoint first, then its state: a state (what --continue resumes from) never exists
        without its checkpoint, so a kill between the two is redone by the resumed run."""
        try:
            weights = write_checkpoint(stem, epoch)
            if tc.save_state:
                counters = state.Counters(step=global_step, epoch=epoch, total_steps=total_steps,
                                          total_epochs=total_epochs, steps_per_epoch=steps_per_epoch, seed=tc.seed,
                                          output_name=cfg.output.name, schedule_steps=schedule_steps)
                state.save_state(trial.state_dir(stem), counters, weights, optimizer, lr_scheduler)
        except Exception as e:
            error = _no_room(e, trial.root, stem)
            if error is None:
                raise
            raise error from e

    if resume is not None and counters is not None:
        _restore_missing_checkpoint(trial, resume, cfg.output.name, counters.epoch, write_checkpoint)
    emit("totals", total_steps=total_steps, total_epochs=total_epochs, steps_per_epoch=steps_per_epoch)
    say(f"total optimization steps: {total_steps} ({total_epochs} epochs x {steps_per_epoch} steps)")
    if global_step >= total_steps:
        say("nothing to do: the target step count is already reached")
        return 0

    vae, unet = comp.vae, comp.unet
    sched = comp.noise_scheduler
    scaling = getattr(vae.config, "scaling_factor", 0.18215)

    def to_pixels(idx: list[int]):
        arr = torch.from_numpy(__import__("numpy").stack([images[i] for i in idx])).permute(0, 3, 1, 2)
        return (arr.float() / 127.5 - 1.0).to(device, dtype=vae_dtype)

    latent_cache = None
    if tc.cache_latents:
        with torch.no_grad():
            latent_cache = [(vae.encode(to_pixels([i])).latent_dist.mode()[0] * scaling).to(weight_dtype)
                            for i in range(len(items))]

    encode_text = TextConditioning(comp, family, [item.caption for item in items], cfg.model.clip_skip, device,
                                   cache=tc.cache_text_encoder_outputs)
    if encode_text.cached:
        for te in text_encoders:  # not needed again: free the accelerator's memory, as sd-scripts does
            te.to("cpu")
        say(f"text encoder outputs cached for {len(set(item.caption for item in items))} captions")
    time_ids = size_time_ids(loaded, cfg.dataset.resolution) if family == "sdxl" else None

    def loss_for(idx: list[int], gen: torch.Generator):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            if latent_cache is not None:
                latents = torch.stack([latent_cache[i] for i in idx])
            else:
                with torch.no_grad():
                    dist = vae.encode(to_pixels(idx)).latent_dist
                    eps = torch.randn(dist.mean.shape, generator=gen).to(device, dist.mean.dtype)
                    latents = ((dist.mean + dist.std * eps) * scaling).to(weight_dtype)
            noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
            timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(device)
            noisy = sched.add_noise(latents, noise, timesteps)
            with torch.set_grad_enabled(bool(te_params)):
                hidden, pooled = encode_text(idx)
            added = None
            if time_ids is not None:
                added = {"text_embeds": pooled, "time_ids": time_ids[idx].to(device, hidden.dtype)}
            pred = unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
            if sched.config.prediction_type == "v_prediction":
                target = sched.get_velocity(latents, noise, timesteps)
            else:
                target = noise
        return F.mse_loss(pred.float(), target.float())

    unet.train()
    losses: list[float] = []
    nonfinite = NonFiniteSteps()
    t0 = time.monotonic()
    epoch_index = global_step // steps_per_epoch
    while epoch_index < total_epochs and global_step < total_steps:
        epoch = epoch_index + 1
        emit("epoch", epoch=epoch, total_epochs=total_epochs)
        say(f"epoch {epoch}/{total_epochs}")
        order = ds.epoch_order(items, tc.seed, epoch)
        batches = [order[i:i + tc.train_batch_size] for i in range(0, len(order), tc.train_batch_size)]
        first = global_step - epoch_index * steps_per_epoch
        for s in range(first, steps_per_epoch):
            if global_step >= total_steps:
                break
            group = batches[s * tc.gradient_accumulation_steps:(s + 1) * tc.gradient_accumulation_steps]
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + global_step)
            step_loss = 0.0
            for idx in group:
                loss = loss_for(idx, gen) / len(group)
                loss.backward()
                step_loss += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
            if nonfinite.take(global_step + 1, step_loss, grad_norm):
                optimizer.step()
            else:
                say(f"warning: step {global_step + 1} skipped, the weights unchanged: loss {step_loss}, "
                    f"gradient norm {grad_norm}")
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            losses.append(step_loss)
            window = losses[-steps_per_epoch:]
            emit("progress", step=global_step, total_steps=total_steps, epoch=epoch, loss=step_loss,
                 avg_loss=sum(window) / len(window), lr=lr_scheduler.get_last_lr()[0],
                 elapsed=time.monotonic() - t0)
            if nonfinite.diverged:
                raise EpochscopeError(nonfinite.explain(tc.learning_rate, tc.mixed_precision))
            epoch_done = s == steps_per_epoch - 1
            if stop.requested:
                # A step that also ends the epoch is saved under the epoch's name; ss_epoch counts only
                # completed epochs, so a stop mid-epoch never calls the unfinished one done.
                final = global_step >= total_steps
                stem = cfg.output.name if final else (epoch_stem(cfg.output.name, epoch) if epoch_done
                                                      else step_stem(cfg.output.name, global_step))
                save(stem, global_step // steps_per_epoch)
                say(f"stopped on request at step {global_step}")
                emit("stopped", step=global_step)
                return 0
            n_steps = tc.save_every_n_steps
            if n_steps and global_step % n_steps == 0 and global_step < total_steps:
                save(step_stem(cfg.output.name, global_step), global_step // steps_per_epoch)
        epoch_index += 1
        n_ep = tc.save_every_n_epochs
        if n_ep and epoch % n_ep == 0 and epoch < total_epochs and global_step < total_steps:
            save(epoch_stem(cfg.output.name, epoch), epoch)
    save(cfg.output.name, global_step // steps_per_epoch)  # completed epochs: a partial one is not counted
    say(f"training finished: {global_step} steps")
    return 0


LOW_DISK_BYTES = 1 << 30  # a save that fails with less than this free was most likely the disk


def _no_room(e: Exception, folder: Path, stem: str) -> EpochscopeError | None:
    """The error to stop with when saving ``stem`` failed for want of disk space, else None. torch.save
    reports a full disk as a bare RuntimeError ("iostream error"), so the free space decides too."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if disk_full(e) is None and free >= LOW_DISK_BYTES:
        return None
    return EpochscopeError(f"no space left on device: saving {stem} in {folder} failed with {free / 2**20:.0f} MB "
                           f"free ({type(e).__name__}: {e}); free some space, then `trainer run --continue` "
                           "resumes from the last complete state")


def _written_before(path: Path, step: int) -> bool:
    """``path`` is a complete checkpoint of ``step``: the interrupted run wrote it but not its state, and
    the resumed run has just redone that step. Kept, so no checkpoint is written (or scored) twice."""
    from shared.safetensors_info import inspect

    info = inspect(path)
    return info.is_complete and info.metadata_int("ss_steps") == step


def _restore_missing_checkpoint(trial: Trial, resume: Path, output_name: str, epoch: int,
                                write: Callable[[str, int], object]) -> None:
    """Resuming from a state whose checkpoint is missing (a kill between the two writes when the state
    came first, as before): write it from the state's weights, already loaded. Nothing else ever would,
    the final one least of all, as a finished run has nothing left to do."""
    from shared.naming import parse_state_dirname

    name = parse_state_dirname(resume.name, output_name)
    if name is None or resume.parent.resolve() != trial.root.resolve():
        return
    if not trial.checkpoint_path(name.stem).exists():  # never overwrite a file that is there
        say(f"{name.filename} is missing beside its state {resume.name}: writing it from that state")
        write(name.stem, epoch)


if __name__ == "__main__":
    sys.exit(main())
