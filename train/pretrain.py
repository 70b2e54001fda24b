"""Pretrain the unified transformer on text, image->text and text->image with progressive vocabulary.

    python train/pretrain.py --run-dir runs/default            # Shapes, tiny, progressive schedule
    python train/pretrain.py --run-dir runs/x --vocab-schedule vanilla
    torchrun --nproc_per_node 8 train/pretrain.py --run-dir runs/big --preset base --data PATH
    python train/pretrain.py --run-dir runs/qwen --init-from PATH/TO/Qwen2.5-0.5B   # a pretrained LM

Reads the tokenizers from the run directory (`RUN/vq`, `RUN/text/text.model`, written by the
scripts in `tokenizers/`; `--image-tokenizer DIR` for a pretrained image tokenizer), caches the
image codes of the data once, trains, checkpoints every N steps (`--resume` continues with the
same data order, schedule state and RNG), and writes the model directory `RUN/model`. Per-task
validation loss, tokens/s, MFU (on a GPU of known peak) and the active image ids are logged to
wandb (offline by default), RUN/metrics.jsonl and the progress bar.

Each step's rows are packed end to end into `--batch-tokens / --max-len` sequences of `--max-len`
tokens (`ugen.sequences.pack`): every step has the same shape, padding is only each sequence's
unfilled tail, and attention never crosses rows. The step's batch is a function of (seed, step),
drawn whole and split between processes, so any number of processes, and any `--micro-batch`
(gradient accumulation), trains on the same rows with the same mean loss. It is prepared on a
thread while the previous step runs; metrics stay on the device between `--log-every` steps.

`--init-from DIR` starts from any Hugging Face causal LM instead of a preset: its architecture,
weights and (unless `--text-tokenizer` says otherwise) its tokenizer. The unified vocabulary is
then the LM's ids, ugen's specials, the image codes; the new rows start at the mean of the LM's.
DIR may also be a ugen model trained on text alone (`--mix text=1,text_qa=1`): its own vocabulary
and weights, its image rows reset to the mean of its text rows (UGen's setting, on Shapes).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ugen.data import add_data_args, data_image_size
from ugen.errors import UserError
from ugen.image_tokenizers import load_image_tokenizer
from ugen.model import (
    PRESETS,
    build_model,
    extend_pretrained_lm,
    flops_per_token,
    init_image_rows_from_pixels,
    is_model_dir,
    lm_vocab,
    masked_loss,
    num_params,
    plain_output_layer,
    save_model_dir,
    text_lm_of_model_dir,
)
from ugen.runtime import Deadline, add_common_args, init_wandb, peak_flops, pick_device, run_main, seed_everything
from ugen.schedule import build_schedule
from ugen.sequences import IGNORE, TASKS, TEXT_TASKS, RowSampler, apply_active_vocab, collate
from ugen.text_tokenizer import load_text_tokenizer
from ugen.training import (
    Distributed,
    MetricsLog,
    Throughput,
    add_run_dir_args,
    claim_run_dir,
    forward_backward,
    LR_SCHEDULES,
    OPTIMIZERS,
    autocast_context,
    lr_schedule,
    make_optimizer,
    resume,
    save_run_checkpoint,
    split_codes,
    step_batch,
)
from ugen.vocab import Vocab

VAL_ROWS_PER_TASK = 64
TEXT_ROOM = 92  # tokens of a row beside the image codes by default: Shapes' long captions fit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/default", help="run directory: tokenizers in, checkpoints and model out")
    parser.add_argument("--image-tokenizer", "--vq", dest="vq", default=None, metavar="DIR",
                        help="image tokenizer directory (default RUN/vq): ugen's own (tokenizers/train_vq.py) or a "
                             "pretrained one saved by save_pretrained (transformers' JanusVQVAE or Emu3VQVAE, "
                             "diffusers' VQModel); it is written into the model directory"),
    parser.add_argument("--text-tokenizer", default=None,
                        help="SentencePiece .model file or Hugging Face tokenizer directory "
                             "(default: the --init-from LM's tokenizer, else RUN/text/text.model)")
    parser.add_argument("--out", default=None, help="model directory to write (default RUN/model)")
    add_data_args(parser)

    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=list(PRESETS), default="tiny", help="transformer size (not used with --init-from)")
    model.add_argument("--init-from", default=None, metavar="DIR",
                       help="start from this Hugging Face causal LM (AutoModelForCausalLM: Llama, Qwen2, Mistral, ...) "
                            "and its tokenizer instead of a --preset, or from a ugen model trained on text alone")
    model.add_argument("--max-len", type=int, default=None,
                       help=f"longest row in tokens, texts clipped to fit, and the length rows are packed into "
                            f"(default: the image's codes + {TEXT_ROOM}, 128 for Shapes' 6x6 codes)")
    model.add_argument("--row-ends", action=argparse.BooleanOptionalAction, default=False,
                       help="end each row of an image's codes with <eol> (as Emu3 and Lumina-mGPT do): the "
                            "transformer sees the rows of the code grid, for one more token per row")
    model.add_argument("--image-init", choices=["pixels", "random"], default="pixels",
                       help="a --preset model's image-code rows (embedding and output): a random projection of "
                            "what each code decodes to, so codes that look alike start alike (pixels), or plain "
                            "random; a pretrained LM's new rows start at the mean of its own either way")

    train = parser.add_argument_group("training")
    # 1600 steps of the default recipe fit the 15 minutes of `make pretrain` on a 2-core CPU with a
    # margin (9.3 min of pretraining at 7,400 tokens/s in a 12-minute job, bf16 on a Zen 4): the LR
    # schedule counts steps, so a run the time guard stops early misses part of its final decay.
    train.add_argument("--steps", type=int, default=1600, help="optimizer steps")
    train.add_argument("--batch-tokens", type=int, default=2816,
                       help="tokens per optimizer step over all processes, packed into sequences of --max-len: "
                            "2816 is 22 sequences of 128, about 47 Shapes rows (the padded batches before had 48)")
    train.add_argument("--micro-batch", type=int, default=None,
                       help="sequences per forward/backward on each process (default: its whole share); fewer "
                            "accumulate gradients over several passes: the same step in less memory")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help="muon: Muon on the hidden matrices, AdamW (--lr) on embeddings, head and norms; or adamw "
                            "throughout (default: muon, adamw with --fsdp, as Muon needs each matrix whole)")
    train.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW's)")
    train.add_argument("--muon-lr", type=float, default=0.02, help="peak learning rate of Muon's matrices")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="wsd",
                       help="cosine: decay from the warmup on; wsd: warmup, the peak held, a linear decay at the end")
    train.add_argument("--decay-share", type=float, default=0.4, help="wsd: the share of the steps that decays")
    train.add_argument("--min-lr-ratio", type=float, default=0.1, help="the LR decays to this fraction of the peak")
    train.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    train.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                       help="forward passes under bf16 autocast over fp32 weights (auto: on CUDA and on CPUs with bf16 "
                            "instructions, AVX512-BF16 or AMX)")
    train.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay on matrices")
    train.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    train.add_argument("--fsdp", action="store_true",
                       help="shard weights, gradients and optimizer state over the processes (FSDP2, one unit per "
                            "block) instead of a full copy each (DDP): for models DDP cannot hold. Checkpoints are "
                            "then torch.distributed.checkpoint shards, which resume on any number of processes")
    train.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                       help="torch.compile the model (auto: on CUDA only; it gave no gain on CPU)")

    mix = parser.add_argument_group("task mixture")
    # With a plan, text-to-image is no longer the task furthest from its goal, and a planned t2i row
    # is longer: caption 0.3 / t2i 0.4 beat 0.2 / 0.5 on validation in every figure (GenEval 0.870
    # against 0.841, caption F1 0.813 against 0.702; benchmarks/experiments.md). No interleaved rows
    # by default: at t2i=0.4,interleaved=0.1 the tiny model writes text with images inside it, but
    # every other task lost a little (README, "Sequence formats").
    mix.add_argument("--mix", default="text=0.05,text_qa=0.1,caption=0.3,vqa=0.15,t2i=0.4",
                     help=f"task weights in phase 1 over {', '.join(TASKS)} (phase 0 keeps the text ones)")
    mix.add_argument("--plan", action=argparse.BooleanOptionalAction, default=None,
                     help="plan, then draw: a t2i row writes the scene's layout (each object's size, color, shape "
                          "and place) between its caption and its image, so the model writes a plan when it draws "
                          "(needs data with layouts: Shapes, or a --layout-column). Default: when the data has them")
    mix.add_argument("--caption-dropout", type=float, default=0.1,
                     help="probability that a t2i row drops its caption (trains the unconditional branch of CFG)")

    vocab = parser.add_argument_group("progressive vocabulary")
    vocab.add_argument("--vocab-schedule", choices=["progressive", "vanilla"], default="vanilla",
                       help="progressive: image ids switched on over time (UGen); vanilla: all from step 0")
    vocab.add_argument("--vocab-order", choices=["random", "frequency"], default="frequency",
                       help="order ids are switched on: a seeded permutation (the paper) or most frequent code first")
    vocab.add_argument("--text-only-steps", type=int, default=60, help="phase 0: steps of text-only training")
    vocab.add_argument("--vocab-full-at", type=float, default=0.3,
                       help="fraction of --steps by which every image id is active")
    vocab.add_argument("--vocab-add", type=int, default=None, help="m: ids switched on at a time (default: derived)")
    vocab.add_argument("--vocab-every", type=int, default=None, help="k: steps between switches (default: derived)")

    log = parser.add_argument_group("logging and checkpoints")
    log.add_argument("--log-every", type=int, default=10,
                     help="steps between training-loss lines (each waits for the device once)")
    log.add_argument("--eval-every", type=int, default=200, help="steps between per-task validation losses")
    log.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    add_run_dir_args(log)
    add_common_args(parser)
    args = parser.parse_args(argv)
    args.mix = parse_mix(args.mix)
    return args


def parse_mix(text: str) -> dict[str, float]:
    try:
        mix = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise UserError(f"--mix {text!r}: expected task=weight pairs like text=0.1,caption=0.3") from None
    unknown = set(mix) - set(TASKS)
    if unknown or any(w < 0 for w in mix.values()):
        raise UserError(f"--mix {text!r}: tasks are {', '.join(TASKS)} with weights >= 0")
    return mix


def validation_batches(sampler: RowSampler, vocab: Vocab, max_len: int, seed: int) -> dict[str, dict]:
    """Fixed rows per task from the validation split, the same at every evaluation."""
    rng = np.random.default_rng([seed, 7])
    return {
        task: collate([sampler.row(task, rng) for _ in range(VAL_ROWS_PER_TASK)], vocab.pad, max_len)
        for task in TASKS
        if sampler.weights[TASKS.index(task)] > 0
    }


@torch.no_grad()
def validation_losses(model, batches: dict[str, dict], vocab: Vocab, active: torch.Tensor, device, autocast,
                      dist: Distributed) -> dict[str, float]:
    """Per-task loss under the current active set, each process scoring its share of the rows; a
    task with no active target is left out."""
    model.eval()
    totals = []
    for batch in batches.values():
        share = {k: v[dist.rank :: dist.world].to(device) for k, v in apply_active_vocab(batch, vocab, active).items()}
        with autocast():
            logits = model(input_ids=share["input_ids"], attention_mask=share["attention_mask"], use_cache=False).logits
        loss = masked_loss(logits, share["labels"], vocab, active, reduction="sum")
        totals.append(torch.stack([loss, (share["labels"] != IGNORE).sum().float()]))
    totals = dist.sum(torch.stack(totals)).tolist() if totals else []  # one wait for the device
    model.train()
    return {task: loss / count for task, (loss, count) in zip(batches, totals) if count > 0}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = Path(args.run_dir)
    dist = Distributed(pick_device(args.device))
    device = dist.device
    if not 0 <= args.text_only_steps < args.steps:
        raise UserError(f"--text-only-steps {args.text_only_steps} must be at least 0 and fewer than --steps {args.steps}")
    claim_run_dir(run / "checkpoints", args.resume, args.overwrite, remove=dist.main)
    dist.barrier()  # no process reads the run directory while rank 0 may still be clearing it
    seed_everything(args.seed)
    deadline = Deadline(args.max_minutes, args.started_at)
    start_time = time.monotonic()

    # -- tokenizers, data, codes ------------------------------------------------------------
    image_tokenizer = load_image_tokenizer(args.vq or run / "vq", device=device, image_size=args.image_size)
    if image_tokenizer.image_size is None:  # a pretrained tokenizer that runs at any size: the data's own
        size, why = data_image_size(args)
        factor = image_tokenizer.downsample
        image_tokenizer.set_image_size(max(factor, factor * round(size / factor)))
        if dist.main:
            print(f"image size: {image_tokenizer.image_size} px ({why}; a multiple of the tokenizer's factor {factor})",
                  flush=True)
    grid = image_tokenizer.grid
    image_len = grid**2 + (grid if args.row_ends else 0)  # an image's tokens: its codes, and a row end after each row
    args.max_len = args.max_len or image_len + TEXT_ROOM
    text = load_text_tokenizer(args.text_tokenizer or args.init_from or run / "text" / "text.model")
    text_lm = None  # a text-only ugen model to start from: its vocabulary comes with it
    if args.init_from and is_model_dir(args.init_from):
        vocab, text_lm = text_lm_of_model_dir(args.init_from, text, image_tokenizer.num_codes, args.max_len, device)
    elif args.init_from:
        vocab = lm_vocab(args.init_from, text, image_tokenizer.num_codes, args.max_len)
    else:
        vocab = Vocab(num_text=text.size, num_image=image_tokenizer.num_codes)
    if args.row_ends and "<eol>" not in vocab.specials:
        raise UserError(f"--row-ends: the vocabulary of --init-from {args.init_from} has no <eol> token")
    vocab = dataclasses.replace(vocab, row_length=grid if args.row_ends else 0)
    max_text = args.max_len - image_len - 8
    if max_text < 8:
        raise UserError(f"--max-len {args.max_len} leaves no room for text beside {image_len} image codes")
    sequences, per_process, micro = batch_shape(args, dist.world)  # before the data, which may take long to encode
    _, train_rows = split_codes(args, "train", image_tokenizer, run / "cache", text, max_text, log=dist.main)
    _, val_rows = split_codes(args, "validation", image_tokenizer, run / "cache", text, max_text, log=dist.main)
    pixel_init = args.image_init == "pixels" and not args.init_from
    if args.plan and not layouts_in(train_rows):
        raise UserError(f"--plan: {args.data} has no layouts in its training split to write plans from")
    args.plan = layouts_in(train_rows) if args.plan is None else args.plan
    sampler = RowSampler(train_rows, vocab, args.mix, args.caption_dropout, args.max_len, plan=args.plan)
    if args.text_only_steps and not any(sampler.weights[TASKS.index(t)] > 0 for t in TEXT_TASKS):
        raise UserError(f"--text-only-steps {args.text_only_steps} needs a text task ({', '.join(TEXT_TASKS)}) "
                        "in --mix that this data supports")
    val_sampler = RowSampler(val_rows, vocab, args.mix, 0.0, args.max_len, plan=args.plan)
    val_batches = validation_batches(val_sampler, vocab, args.max_len, args.seed)

    # -- schedule, model, optimizer ---------------------------------------------------------
    schedule = build_schedule(
        args.vocab_schedule, vocab.num_image, args.steps,
        text_only_steps=args.text_only_steps, full_at=args.vocab_full_at,
        ids_per_add=args.vocab_add, add_every=args.vocab_every, order=args.vocab_order, seed=args.seed,
        code_counts=train_rows.code_counts,
    )
    if text_lm is not None:
        model = text_lm
    elif args.init_from:
        model = extend_pretrained_lm(args.init_from, vocab, device)
    else:
        model = build_model(args.preset, vocab, args.max_len, device)
        if pixel_init:
            init_image_rows_from_pixels(model, vocab, image_tokenizer.code_patches(), args.seed)
    image_tokenizer.cpu()  # the transformer trains on codes only; the tokenizer waits to be saved with it
    wrapped = dist.wrap(model, fsdp=args.fsdp)  # FSDP shards the parameters in place: the optimizer comes after
    args.optimizer = args.optimizer or ("adamw" if args.fsdp else "muon")
    if args.optimizer == "muon" and args.fsdp:
        raise UserError("--optimizer muon does not shard: it needs each hidden matrix whole (use --optimizer adamw with --fsdp)")
    optimizer = make_optimizer(model, args.lr, args.weight_decay, kind=args.optimizer, muon_lr=args.muon_lr)
    factor = lr_schedule(args.lr_schedule, args.warmup, args.steps, args.min_lr_ratio, args.decay_share)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    config = vars(args) | {"vocab": vocab.to_dict()}  # the process count is not in it: any count trains the same

    checkpoint_state = {"schedule": schedule.to_dict(), "config": config}  # what a checkpoint keeps, and resume checks
    state = resume(run / "checkpoints", args.resume, model, optimizer, scheduler, checkpoint_state, log=dist.main)
    start = state["step"] if state else 0  # the schedule is a function of the step: resume checked it is the same

    if dist.main:  # one JSON line per --log-every steps: loss, lr, active ids, speed, validation losses
        metrics = MetricsLog(run / "metrics.jsonl", start)

    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    train_model = torch.compile(wrapped) if use_compile else wrapped  # packed batches: one shape, one compile
    # one process, eager (FSDP shards the model in place, so `is` alone does not tell): see forward_backward
    head_on_targets = dist.world == 1 and train_model is model and plain_output_layer(model)
    autocast = autocast_context(device, args.precision)
    wandb_run = init_wandb(args.wandb if dist.main else "disabled", run, "ugen-pretrain", config)
    if dist.main:
        print(f"model: {args.init_from or args.preset}, {num_params(model) / 1e6:.2f}M parameters, vocab {vocab.size} "
              f"({vocab.num_text} text, {vocab.num_image} image), schedule {schedule.kind} "
              f"(m={schedule.ids_per_add}, k={schedule.add_every}, all active at step {schedule.full_step()}); "
              f"batch {sequences} x {args.max_len} tokens, {per_process // micro} micro-batch(es) of {micro} on each "
              f"of {dist.world} process(es)", file=sys.stderr)

    # -- the loop -----------------------------------------------------------------------------
    def prepare(step: int) -> dict:
        """This process's share of the step's batch, on a worker thread while the step before runs."""
        batch = step_batch(sampler, vocab, schedule, args.seed, step, sequences, args.max_len)
        mine = slice(dist.rank * per_process, (dist.rank + 1) * per_process)
        for key in ("input_ids", "labels", "position_ids"):
            batch[key] = batch[key][mine].pin_memory() if device.type == "cuda" else batch[key][mine]
        return batch

    speed = Throughput(dist.world, flops_per_token(model, args.max_len), peak_flops(device))
    window_loss, window_steps = torch.zeros((), device=device), 0  # summed on the device, read at log steps
    loss_value, val, shown = float("nan"), {}, {}
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="pretrain", disable=not dist.main)
    step = start
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(prepare, start)
        for step in bar:
            if step % args.log_every == 0 and dist.any(deadline.expired()):
                if dist.main:
                    print(f"--max-minutes reached at step {step}: stopping", file=sys.stderr)
                break
            batch = ahead.result()
            if step + 1 < args.steps:
                ahead = pool.submit(prepare, step + 1)
            active = batch["active"]
            window_loss += forward_backward(train_model, wrapped, batch, micro, vocab, dist, autocast, head_on_targets)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip) if args.grad_clip > 0 else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            speed.add(batch["tokens"])
            window_steps += 1

            done = step + 1
            evaluate = done % args.eval_every == 0 or done == args.steps
            checkpoint = done % args.checkpoint_every == 0 and done < args.steps
            if not (done % args.log_every == 0 or evaluate or checkpoint or done == args.steps):
                continue
            # A log step: the one wait for the device in --log-every steps.
            loss_value = dist.sum(window_loss).item() / window_steps  # the mean over processes and steps
            window_loss.zero_()
            window_steps = 0
            if not np.isfinite(loss_value):
                raise RuntimeError(f"loss is {loss_value} by step {done}; lower --lr or check the data")
            shown = speed.close_window()
            logs = {"train/loss": loss_value, "lr": scheduler.get_last_lr()[0], "active_image_ids": int(active.sum()), **shown}
            if grad_norm is not None:
                logs["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if evaluate:
                val = validation_losses(model, val_batches, vocab, active, device, autocast, dist)
                logs |= {f"val/{task}": v for task, v in val.items()}
            if dist.main:
                wandb_run.log(logs, step=done)
                metrics.write(done, logs)
                postfix = {"loss": f"{loss_value:.3f}", "tok/s": f"{shown['tokens_per_s']:,.0f}", "active": int(active.sum())}
                if "mfu" in shown:
                    postfix["mfu"] = f"{100 * shown['mfu']:.1f}%"
                bar.set_postfix(postfix | {k: f"{v:.2f}" for k, v in val.items()})
            if checkpoint:
                save_run_checkpoint(run / "checkpoints", done, model, optimizer, scheduler, checkpoint_state, dist)
            speed.restart()  # validation and checkpoints are not training time
        else:
            step = args.steps
    bar.close()
    if dist.main:
        metrics.close()

    # -- save ---------------------------------------------------------------------------------
    save_run_checkpoint(run / "checkpoints", step, model, optimizer, scheduler, checkpoint_state, dist)
    whole = dist.full_model(model)  # under FSDP, gathered from every process
    if dist.main:
        out = Path(args.out or run / "model")
        save_model_dir(
            out, whole,
            {"vocab": vocab.to_dict(), "schedule": schedule.to_dict(), "image_size": args.image_size,
             "grid": grid, "max_len": args.max_len, "step": step, "plan": args.plan,
             "pretrain": config},
            image_tokenizer, text,
        )
        minutes = (time.monotonic() - start_time) / 60
        vals = " ".join(f"val/{t}={v:.3f}" for t, v in val.items())
        total = speed.total()
        print(f"pretrain: {step} steps, train loss {loss_value:.3f}, {vals}, {speed_text(total, dist.world)}, "
              f"{minutes:.1f} min -> {out}")
        wandb_run.summary.update({"final_step": step, "minutes": minutes, **total})
        wandb_run.finish()
    # The DDP wrapper's reducer goes before the process group: freed after it (as main returns),
    # its destructor waited forever on the destroyed gloo group's lock (seen in CI, now and then).
    del train_model, wrapped
    gc.collect()
    dist.barrier()
    dist.close()


def layouts_in(rows) -> bool:
    """Whether any training row has a layout (the code cache counts them; a list is looked through)."""
    count = getattr(rows, "layouts", None)
    return bool(count) if count is not None else any(r.layout for r in rows)


def batch_shape(args: argparse.Namespace, world: int) -> tuple[int, int, int]:
    """(sequences per step, sequences per process, sequences per micro-batch) from the flags."""
    sequences = args.batch_tokens // args.max_len
    if sequences < world or sequences % world:
        raise UserError(f"--batch-tokens {args.batch_tokens} makes {sequences} sequences of --max-len {args.max_len}; "
                        f"the {world} process(es) need a multiple of {world}")
    per_process = sequences // world
    micro = args.micro_batch or per_process
    if micro < 1 or per_process % micro:
        raise UserError(f"--micro-batch {args.micro_batch} must divide the {per_process} sequences of each process")
    return sequences, per_process, micro


def speed_text(figures: dict[str, float], world: int) -> str:
    text = f"{figures['tokens_per_s']:,.0f} tokens/s"
    if world > 1:
        text += f" ({figures['tokens_per_s_per_device']:,.0f} per device)"
    if "mfu" in figures:
        text += f", MFU {100 * figures['mfu']:.1f}%"
    return text


if __name__ == "__main__":
    run_main(main)
