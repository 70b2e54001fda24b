"""Unified-GRPO: reinforce one ugen model with a reconstruction reward, in two stages (UAE).

    python train/rl.py --model runs/default/model --out runs/default/model-rl [--stages alternate]

Understanding is an encoder (image -> caption) and generation a decoder (caption -> image); the
reward of both is how well the image comes back, `reward(original, reconstruction, scene)`.

  stage 1  generation for understanding: G captions sampled per image (temperature, top-p), an
           image drawn from each by the current model (no gradient), GRPO on the caption tokens.
  stage 2  understanding for generation: one greedy caption per image, G images sampled from it
           with CFG, GRPO on the image tokens, scored on the guided distribution they were drawn
           from. On Shapes, `--short-captions` of the images are drawn from their short caption
           instead ('two red circles and a blue square', what GenEval asks), rewarded by
           `named_f1` (the colors and shapes it names, not sizes or places).

On Shapes, `--caption-weight W` makes stage 1's reward (1 - W) * reconstruction + W * the caption's
F1 against the scene (`ugen.metrics.caption_attributes`, the eval's caption F1): a reconstruction
alone pays a caption for naming objects the drawing then happens to show, invented or not.

`--stages 1`, `2` or `alternate` (1, 2, 1, ...). The loss (`ugen.grpo.grpo_loss`) normalizes
advantages within each group, clips the importance ratio, adds a k3 KL to the frozen starting model
(`--kl-beta`, 0 turns it off) and makes `--epochs` optimizer passes over each batch of rollouts.
Per-step reward per stage, KL, clip fraction, entropy, caption length and the share of groups whose
rewards are all equal (no signal) go to RUN/metrics.jsonl, wandb and the progress bar, and every
`--probe-every` steps a deterministic held-out reconstruction reward (`probe`); samples (originals,
reconstructions, captions) to RUN/samples every `--sample-every` steps; checkpoints to RUN/checkpoints (`--resume` continues from the newest).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm


from ugen.api import GENERATE_DEFAULTS, GREEDY, load
from ugen.data import add_data_args, data_of_model
from ugen.errors import UserError
from ugen.grpo import Guidance, group_advantages, grpo_loss, policy_logits, rollout_batch, stage_tokens, token_logprobs
from ugen.metrics import caption_attributes
from ugen.model import read_meta, save_model_dir
from ugen.rewards import DEFAULT_REWARD, REWARDS, build_reward, named_f1
from ugen.runtime import Deadline, add_common_args, init_wandb, pick_device, run_main, seed_everything, write_json
from ugen.sampling import SamplingParams
from ugen.sequences import t2i_prompt
from ugen.shapes import short_caption
from ugen.training import (
    MetricsLog,
    add_run_dir_args,
    claim_run_dir,
    make_optimizer,
    resume,
    save_checkpoint,
    split_codes,
    warmup_cosine,
)

MAX_CAPTION_TOKENS = 48


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/default/model", help="model directory to start from")
    parser.add_argument("--out", default=None, help="model directory to write (default: MODEL-rl beside MODEL)")
    parser.add_argument("--run-dir", default=None, help="checkpoints, metrics and samples (default: OUT's parent/rl)")
    add_data_args(parser, from_model=True)

    rl = parser.add_argument_group("Unified-GRPO")
    rl.add_argument("--stages", choices=["1", "2", "alternate"], default="alternate",
                    help="1: captions (generation for understanding); 2: images (understanding for generation)")
    rl.add_argument("--steps", type=int, default=120, help="RL steps (each: rollouts, rewards, --epochs updates)")
    rl.add_argument("--images-per-step", type=int, default=8, help="images (groups) per step")
    rl.add_argument("--group-size", type=int, default=4, help="G: captions (stage 1) or images (stage 2) per image")
    rl.add_argument("--reward", default=None,
                    help=f"reward, a weighted sum of {', '.join(REWARDS)}, e.g. object_f1=0.7,ssim=0.3 (default: "
                         f"{DEFAULT_REWARD[True]} on Shapes, {DEFAULT_REWARD[False]} on other data)")
    rl.add_argument("--reward-model", default=None, help="local Hugging Face vision model for hf_cosine (CLIP, DINOv2, ...)")
    rl.add_argument("--caption-temperature", type=float, default=1.0, help="stage 1 caption sampling")
    rl.add_argument("--caption-top-p", type=float, default=0.95, help="stage 1 caption sampling")
    # Stage 2 samples as `generate` does (its defaults were chosen on validation prompts), so that
    # RL improves the images users draw; no RL setting is chosen on the test split.
    rl.add_argument("--image-temperature", type=float, default=GENERATE_DEFAULTS.temperature, help="stage 2 image sampling")
    rl.add_argument("--cfg", type=float, default=GENERATE_DEFAULTS.cfg, help="stage 2 guidance scale")
    rl.add_argument("--plan-temperature", type=float, default=GENERATE_DEFAULTS.plan_temperature,
                    help="stage 2: temperature of the plan a model pretrained with --plan writes before it draws")
    rl.add_argument("--short-captions", type=float, default=0.5,
                    help="Shapes: the share of stage 2's images drawn from their short caption instead of the "
                         "model's own, rewarded by named_f1 (color and shape only)")
    rl.add_argument("--caption-weight", type=float, default=0.0,
                    help="Shapes: stage 1's reward is (1 - W) * reconstruction + W * the caption's F1 against the scene")
    rl.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (constant after warmup)")
    rl.add_argument("--warmup", type=int, default=5, help="linear warmup steps")
    rl.add_argument("--epochs", type=int, default=2, help="optimizer passes over each batch of rollouts")
    rl.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip range of the importance ratio")
    rl.add_argument("--kl-beta", type=float, default=0.04, help="weight of the k3 KL to the starting model (0: off)")
    rl.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")

    log = parser.add_argument_group("logging and checkpoints")
    log.add_argument("--probe-every", type=int, default=40, help="steps between held-out reconstruction probes (0: none)")
    log.add_argument("--probe-images", type=int, default=128, help="validation images of the held-out probe")
    log.add_argument("--sample-every", type=int, default=20, help="steps between saved samples")
    log.add_argument("--checkpoint-every", type=int, default=40, help="steps between checkpoints")
    add_run_dir_args(log)
    add_common_args(parser)
    args = parser.parse_args(argv)
    for name in ("steps", "images_per_step", "group_size", "epochs", "probe_images"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}")
    if args.probe_every < 0:
        raise UserError(f"--probe-every must be >= 0, not {args.probe_every}")
    for name in ("short_captions", "caption_weight"):
        if not 0 <= getattr(args, name) <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1], not {getattr(args, name)}")
    if args.group_size < 2:
        raise UserError("--group-size must be >= 2: GRPO's advantages compare samples within a group")
    return args


def stage_of(step: int, stages: str) -> int:
    return {"1": 1, "2": 2}.get(stages) or 1 + step % 2


@dataclass
class RolloutParams:
    caption: SamplingParams  # stage 1's sampled captions
    image: SamplingParams  # stage 2's sampled images


def rollout(policy, stage: int, codes: np.ndarray, group_size: int, params: RolloutParams, generator: torch.Generator,
            given: list[list[int] | None] | None = None):
    """G rollouts for each of N images (their codes), in groups of G: the prompts, the sampled
    completions GRPO trains, the caption of each rollout (text-piece ids) and its reconstruction
    as (N * G, H, W, 3) pixels. In stage 2, `given[i]` (text-piece ids), where not None, is drawn
    instead of image i's greedy caption. Nothing here keeps a gradient."""
    vocab = policy.vocab
    if stage == 1:  # G sampled captions per image, each drawn back into an image
        prompts, completions = policy.draw_captions(np.repeat(codes, group_size, axis=0), params.caption, generator, MAX_CAPTION_TOKENS)
        captions = [vocab.to_text(c) for c in completions]
        drawn = policy.draw_codes(captions, GENERATE_DEFAULTS, generator)[2]
    else:  # one caption per image (greedy, or given), G images sampled from it
        _, greedy = policy.draw_captions(codes, GREEDY, generator, MAX_CAPTION_TOKENS)
        given = given or [None] * len(codes)
        captions = [g if g is not None else vocab.to_text(c) for c, g in zip(greedy, given) for _ in range(group_size)]
        prompts, completions, drawn = policy.draw_codes(captions, params.image, generator)
    return prompts, completions, captions, policy.decode_codes(drawn)


def probe(policy, examples, codes: np.ndarray, reward_fn) -> dict[str, float]:
    """Held-out reconstruction, as `make eval` scores it: each fixed validation image is captioned
    greedily and drawn back at generate's sampling defaults, always from the same random seed, so
    the same model gets the same score. The training reward is read on new images and new draws
    every step, and at this size their spread (about 0.1 a step) buries a trend of a few
    hundredths. Even so, 128 images are few: RL's change differs in sign between image sets."""
    as_eval = RolloutParams(GREEDY, GENERATE_DEFAULTS)
    pictures = rollout(policy, 2, codes, 1, as_eval, torch.Generator(policy.device).manual_seed(0))[3]
    return {"probe/reconstruction": float(np.mean([reward_fn(e.image, p, e.scene) for e, p in zip(examples, pictures)]))}


def reward_trend(metrics_path: Path) -> str:
    """Each stage's training reward, first -> last quarter of its steps, and the held-out probe,
    first -> last."""
    series: dict[str, list[float]] = {}
    for line in metrics_path.read_text().splitlines():
        for key, value in json.loads(line).items():
            if key.endswith("/reward") or key.startswith("probe/"):
                series.setdefault(key, []).append(value)
    parts = []
    for key, values in sorted(series.items()):
        if key.startswith("probe/"):
            parts.append(f"held-out {key.removeprefix('probe/')} {values[0]:.3f} -> {values[-1]:.3f}")
        else:
            quarter = max(1, len(values) // 4)
            parts.append(f"{key.replace('/', ' ')} {np.mean(values[:quarter]):.3f} -> {np.mean(values[-quarter:]):.3f} (first -> last quarter)")
    return ", ".join(parts)


def save_samples(directory: Path, step: int, originals, reconstructions, captions: list[str], stage: int) -> None:
    """A two-row strip (originals over their reconstructions) and the captions, per saved step."""
    directory.mkdir(parents=True, exist_ok=True)
    top, bottom = np.concatenate(list(originals), axis=1), np.concatenate(list(reconstructions), axis=1)
    strip = np.concatenate([top, bottom], axis=0)
    PIL.Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), PIL.Image.NEAREST).save(directory / f"step-{step:05d}.png")
    write_json(directory / f"step-{step:05d}.json", {"step": step, "stage": stage, "captions": captions})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start_time = time.monotonic()
    deadline = Deadline(args.max_minutes, args.started_at)
    model_dir = Path(args.model)
    out = Path(args.out or model_dir.with_name(model_dir.name + "-rl"))
    run = Path(args.run_dir or out.parent / "rl")
    if out.resolve() == model_dir.resolve():
        raise UserError("--out must differ from --model: the starting model is the KL reference and stays as it is")
    claim_run_dir(run / "checkpoints", args.resume, args.overwrite)
    seed_everything(args.seed)
    device = pick_device(args.device)
    meta = read_meta(model_dir)
    data_of_model(args, meta)
    args.reward = args.reward or DEFAULT_REWARD[args.data == "shapes"]
    if args.caption_weight and args.data != "shapes":
        raise UserError("--caption-weight scores captions against Shapes scenes, and this data has none")
    policy = load(model_dir, device, dtype=torch.float32)  # trained: fp32 weights, bf16 autocast on CUDA
    model, vocab = policy.model, policy.vocab
    reward_fn = build_reward(args.reward, policy.image_tokenizer, args.reward_model, device, scenes=args.data == "shapes")
    reference = None
    if args.kl_beta > 0:
        reference = copy.deepcopy(model).eval().requires_grad_(False)

    if args.streaming:
        raise UserError("--streaming: RL reads each drawn image's original by its row, which a stream cannot give")
    max_text = meta["max_len"] - policy.span_len - 8  # as pretraining clipped them: one cache serves both
    source, cache = split_codes(args, "train", policy.image_tokenizer, run / "cache", policy.text, max_text)
    if len(cache) < args.images_per_step:
        raise UserError(f"--images-per-step {args.images_per_step} is more than the {len(cache)} training images")

    optimizer = make_optimizer(model, args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.warmup, args.steps, min_ratio=1.0))
    config = vars(args) | {"start_model": str(model_dir)}
    # The learning rate is constant after warmup, whatever --steps is: a resumed run may be extended.
    state = resume(run / "checkpoints", args.resume, model, optimizer, scheduler, {"config": config},
                   may_change=frozenset({"steps"}))
    start = state["step"] if state else 0
    metrics = MetricsLog(run / "metrics.jsonl", start)
    wandb_run = init_wandb(args.wandb, run, "ugen-rl", config)

    G, B = args.group_size, args.images_per_step
    params = RolloutParams(SamplingParams(args.caption_temperature, 0, args.caption_top_p),
                           SamplingParams(args.image_temperature, 0, 1.0, args.cfg, args.plan_temperature))
    probe_source, probe_cache = split_codes(args, "validation", policy.image_tokenizer, run / "cache", policy.text, max_text)
    probe_examples = [probe_source.example(row) for row in probe_cache.rows[: args.probe_images]]
    probe_codes = np.asarray(probe_cache.codes[: args.probe_images])

    def run_probe(done: int) -> None:
        model.eval()
        logs = probe(policy, probe_examples, probe_codes, reward_fn)
        wandb_run.log(logs, step=done)
        metrics.write(done, logs)
        tqdm.write(f"step {done}: held-out reconstruction {logs['probe/reconstruction']:.3f}", file=sys.stderr)

    print(f"rl: stages {args.stages}, {B} images x {G} per step, reward {args.reward}, KL beta {args.kl_beta}", file=sys.stderr)

    if start == 0 and args.probe_every:
        run_probe(0)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="rl")
    step = start
    for step in bar:
        if deadline.expired():
            print(f"--max-minutes reached at step {step}: stopping", file=sys.stderr)
            break
        stage = stage_of(step, args.stages)
        rng = np.random.default_rng([args.seed, step])  # the images of a step: a resumed run redraws the same
        pick = rng.choice(len(cache), size=B, replace=False)
        generator = torch.Generator(device).manual_seed(int(rng.integers(2**62)))
        rows = cache.rows[pick]  # the originals are read again from the data: the cache holds codes
        originals = [source.image(row) for row in rows for _ in range(G)]
        scenes = [source.scene(row) for row in rows for _ in range(G)]

        # Stage 2 draws some Shapes images from their short caption ('two red circles and a blue
        # square', GenEval's kind of prompt) rather than the model's own long one, rewarded for what
        # that caption names (UAE's understanding for generation, on the prompts generation gets).
        short = (rng.random(B) < args.short_captions) if stage == 2 and args.data == "shapes" else np.zeros(B, bool)
        given = [policy.text.encode(short_caption(scenes[i * G])) if s else None for i, s in enumerate(short)]

        model.eval()
        prompts, completions, captions, pictures = rollout(policy, stage, np.asarray(cache.codes[pick]), G, params, generator, given)
        rewards = torch.tensor([named_f1(o, p, s) if named else reward_fn(o, p, s)
                                for o, p, s, named in zip(originals, pictures, scenes, np.repeat(short, G))])
        faithful, reconstructed = None, rewards
        if stage == 1 and args.caption_weight:
            faithful = torch.tensor([caption_attributes(policy.text.decode(c), s)["f1"] for c, s in zip(captions, scenes)])
            rewards = (1 - args.caption_weight) * reconstructed + args.caption_weight * faithful
        advantages = group_advantages(rewards, G).to(device)
        temperature = (params.caption if stage == 1 else params.image).temperature
        batch = rollout_batch(prompts, completions, stage_tokens(vocab, stage), vocab.pad).to(device)
        # Stage 2's images were drawn with CFG from the image ids the engine allows: the ratio and
        # the KL score that distribution, not the conditional one alone.
        guidance = None if stage == 1 else Guidance.of(
            t2i_prompt(vocab, None), completions, stage_tokens(vocab, 2), vocab.pad, params.image.cfg,
            policy.engine.allowed_image).to(device)
        with torch.no_grad():
            old = token_logprobs(policy_logits(model, batch, temperature, guidance), batch.targets)[0]
            ref = (token_logprobs(policy_logits(reference, batch, temperature, guidance), batch.targets)[0]
                   if reference is not None else None)

        model.train()
        for _ in range(args.epochs):
            loss, stats = grpo_loss(policy_logits(model, batch, temperature, guidance), batch.targets, batch.trained,
                                    advantages, old, ref, args.clip_eps, args.kl_beta)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        done = step + 1
        logs = {f"stage{stage}/reward": float(rewards.mean()), "stage": stage, "loss": loss.item(),
                "kl": stats["kl"], "clip_fraction": stats["clip_fraction"], "entropy": stats["entropy"],
                "flat_groups": float((rewards.view(-1, G).std(dim=1) == 0).float().mean()),
                "caption_tokens": float(np.mean([len(c) for c in captions])),
                **({"stage1/caption_f1": float(faithful.mean()), "stage1/reconstruction": float(reconstructed.mean())}
                   if faithful is not None else {}),
                **({"stage2/short_caption_reward": float(rewards.view(B, G)[torch.from_numpy(short)].mean())} if short.any() else {}),
                "lr": scheduler.get_last_lr()[0]}
        wandb_run.log(logs, step=done)
        metrics.write(done, logs)
        bar.set_postfix(stage=stage, reward=f"{rewards.mean():.3f}", kl=f"{stats['kl']:.4f}", clip=f"{stats['clip_fraction']:.2f}")
        if done % args.sample_every == 0 or done == 1:
            save_samples(run / "samples", done, originals[::G], pictures[::G], [policy.text.decode(c).strip() for c in captions[::G]], stage)
        if args.probe_every and (done % args.probe_every == 0 or done == args.steps):
            run_probe(done)
        if done % args.checkpoint_every == 0 and done < args.steps:
            save_checkpoint(run / "checkpoints", done, model, optimizer, scheduler, {"config": config})
    else:
        step = args.steps
    bar.close()
    metrics.close()

    save_checkpoint(run / "checkpoints", step, model, optimizer, scheduler, {"config": config})
    kept = {k: v for k, v in meta.items() if k not in ("format_version", "vq", "text_tokenizer")}  # written anew
    save_model_dir(out, model, kept | {"rl": config | {"steps_done": step}}, model_dir / meta["vq"], policy.text)
    print(f"rl: {step} steps, {reward_trend(metrics.path)}, {(time.monotonic() - start_time) / 60:.1f} min -> {out}")
    wandb_run.summary.update({"final_step": step})
    wandb_run.finish()


if __name__ == "__main__":
    run_main(main)
