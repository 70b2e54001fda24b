"""Train the VQ image tokenizer once; every later stage encodes images with it and keeps it frozen.

    python tokenizers/train_vq.py --out runs/vq                       # Shapes, about 3 CPU minutes
    python tokenizers/train_vq.py --data ./my_images --text-column caption --out runs/vq-mine

The loss is a reconstruction loss in which pixels that differ from the image's background weigh
`--object-weight` times more than background pixels. With a plain loss, the background (most of a
Shapes image) dominates and small squares and triangles blur into circles; weighting the object
pixels keeps their edges, which is what the Shapes parser (and a viewer) reads.

At the end the script reports, on validation images: PSNR, the fraction of the codebook in use,
and on Shapes the parser's accuracy on reconstructions (the ceiling for every image the
transformer will ever generate). The figures go to OUT/metrics.json beside the tokenizer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ugen.data import add_data_args, data_image_size, open_split
from ugen.data.sources import image_batches
from ugen.errors import UserError
from ugen.metrics import tokenizer_metrics
from ugen.runtime import Deadline, add_common_args, init_wandb, pick_device, run_main, seed_everything, write_json
from ugen.training import autocast_context, warmup_cosine
from ugen.image_tokenizers.ugen_vq import DOWNSAMPLES, ENCODERS, QUANTIZERS, UgenVQ, VQConfig

MAX_DEFAULT_GRID = 16  # codes per side that --downsample's default aims at (LlamaGen: 16x16 at 256 px)
BACKGROUND_TOLERANCE = 0.08  # in [-1, 1] units (~10 of 255): JPEG noise is background, any object is not


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(parser)

    # model
    group = parser.add_argument_group("model")
    group.add_argument("--quantizer", choices=QUANTIZERS, default="fsq",
                       help="fsq: finite scalar quantization (no codebook to collapse); vq: learned "
                            "codebook with EMA, k-means init, cosine codes and dead-code restarts")
    group.add_argument("--levels", default="8,5,5,5", help="FSQ levels per latent dim; codes = their product")
    group.add_argument("--codebook-size", type=int, default=1024, help="VQ codebook size")
    group.add_argument("--downsample", type=int, choices=DOWNSAMPLES, default=None,
                       help="image pixels per code along a side (default: the smallest factor that keeps the "
                            "code grid at most 16x16, LlamaGen's 256 codes: 8 for Shapes' 48 px, 16 for 256 px)")
    group.add_argument("--channels", default=None,
                       help="comma-separated widths at 1/2, 1/4, ... 1/downsample resolution, the decoder "
                            "mirrors them (default: 16, doubling per stage: 16,32,64 for factor 8; Shapes "
                            "24 doubling: 24,48,96, which its free layouts need: README, 'The Shapes world')")
    group.add_argument("--encoder", choices=ENCODERS, default="wide",
                       help="what each code sees: 'wide' (its neighbours too; the default) or 'cell' (only its "
                            "own pixels: equal cells, equal codes)")
    group.add_argument("--res-blocks", type=int, default=1, help="residual blocks at the code resolution")

    # training
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 3000 for shapes, 1500 for other data)")
    group.add_argument("--batch-size", type=int, default=32, help="images per step, drawn at random")
    group.add_argument("--lr", type=float, default=4e-3, help="peak AdamW learning rate (cosine decay)")
    group.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    group.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    group.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="fp32",
                       help="forward passes under bf16 autocast over fp32 weights (auto: on CUDA and on CPUs with "
                            "bf16 instructions); the loss and the metrics are fp32 either way. fp32 by default: on "
                            "Shapes bf16 ran 1.4x the steps a second on a Zen 4 CPU but its reconstructions read no "
                            "better in the same time (benchmarks/experiments.md, 'The image tokenizer')")
    group.add_argument("--loss", choices=["mse", "l1"], default="mse", help="per-pixel reconstruction loss")
    group.add_argument("--object-weight", type=float, default=4.0,
                       help="weight of pixels that differ from the background (1 = plain loss)")
    group.add_argument("--shuffle-buffer", type=int, default=2048,
                       help="with --streaming: images held to draw batches from (a stream cannot be indexed)")
    group.add_argument("--log-every", type=int, default=25, help="steps between wandb logs")

    # run
    add_common_args(parser)
    parser.add_argument("--out", default="runs/vq", help="directory for vq.safetensors, vq.json and metrics.json")
    args = parser.parse_args(argv)
    shapes = args.data == "shapes"
    # Shapes' objects sit anywhere at any extent: its 6x6 codes need the wider network and the
    # longer run (wide encoder: the parser reads 98.2% of reconstructed validation objects, against
    # 96.1% with 16,32,64 and 3000 steps and 91% with 1500: the metrics this script prints).
    # The encoder is the wide one for Shapes too. The cell encoder (each code sees its own 8x8
    # pixels only) gave codes the transformer predicts more easily (validation text-to-image loss
    # 0.96 against 1.75 nats per code in the default recipe), but its reconstructions read 86.6% of
    # images exactly against 96.8% (a code that sees one corner of a small object cannot say which
    # shape it belongs to), and with a plan and cool sampling the wide codes draw as well (GenEval
    # 0.886 against 0.870 on validation) and caption far better (caption F1 0.872 against 0.813,
    # PIL-drawn shapes 0.905 against 0.720): benchmarks/experiments.md, "The image tokenizer".
    if args.steps is None:
        args.steps = 3000 if shapes else 1500
    for name in ("steps", "batch_size"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.object_weight < 1:
        raise UserError("--object-weight must be >= 1 (1 means every pixel weighs the same)")
    if args.image_size is None:
        args.image_size, why = data_image_size(args)
        print(f"image size: {args.image_size} px ({why})", flush=True)
    if args.downsample is None:
        args.downsample = next((f for f in DOWNSAMPLES if f >= 8 and args.image_size // f <= MAX_DEFAULT_GRID), DOWNSAMPLES[-1])
    if args.channels is None and shapes:  # 24, doubling per stage
        args.channels = ",".join(str(24 << i) for i in range(args.downsample.bit_length() - 1))
    return args


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, not {text!r}") from None


def object_mask(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W) float, 1 on and next to pixels unlike the background.

    The background is each image's median colour (Shapes: the plain light fill). The mask is
    dilated by one pixel so that the background just outside an edge weighs as much as the object
    just inside it: both decide where the edge is.
    """
    background = images.flatten(2).median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1)
    mask = (images - background).abs().amax(dim=1, keepdim=True) > BACKGROUND_TOLERANCE  # (B, 1, H, W)
    return F.max_pool2d(mask.float(), kernel_size=3, stride=1, padding=1)


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, object_weight: float, kind: str) -> torch.Tensor:
    """Per-pixel loss averaged with weights: object pixels count `object_weight` times."""
    error = (recon - images).pow(2) if kind == "mse" else (recon - images).abs()  # (B, 3, H, W)
    weights = 1.0 + (object_weight - 1.0) * object_mask(images)  # (B, 1, H, W)
    return (error * weights).sum() / (weights.sum() * images.shape[1])


def train(args: argparse.Namespace) -> dict[str, float]:
    began = time.monotonic()
    seed_everything(args.seed)
    device = pick_device(args.device)
    config = VQConfig(image_size=args.image_size, downsample=args.downsample,
                      channels=None if args.channels is None else _int_list(args.channels, "--channels"),
                      res_blocks=args.res_blocks, encoder=args.encoder, quantizer=args.quantizer,
                      levels=_int_list(args.levels, "--levels"), codebook_size=args.codebook_size)
    print(f"vq config: {config}")
    train_source = open_split(args, "train")
    val_examples = (val_source := open_split(args, "validation")).examples()  # at most --num-val, in memory
    if not val_examples or (train_source.random_access and not len(train_source)):
        raise UserError(f"--data {args.data}: {len(val_examples)} readable validation examples and "
                        f"{len(train_source) if train_source.random_access else 'a stream of'} train rows; need at least one of "
                        "each (without its own split, 5% of rows are validation)")
    generator = torch.Generator().manual_seed(args.seed)
    # Drawn at random and decoded per batch: no data set is held in memory, whatever its size.
    batches = image_batches(train_source, args.batch_size, generator, args.shuffle_buffer)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = UgenVQ(config).to(device).train()
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    run = init_wandb(args.wandb, out, "ugen-vq", {**vars(args), "vq_config": config.__dict__})
    deadline = Deadline(args.max_minutes, args.started_at)
    lr_factor = warmup_cosine(args.warmup, args.steps, min_ratio=0.1)  # a short run ends on a low rate
    autocast = autocast_context(device, args.precision)

    start = time.monotonic()
    bar = tqdm(range(args.steps), desc="training vq", unit="step")
    for step in bar:
        if deadline.expired():
            print(f"--max-minutes reached: stopping after {step} steps")
            break
        images = next(batches).to(device).float().div_(127.5).sub_(1.0)  # (B, 3, H, W)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step)
        with autocast():
            recon, _, aux_loss = tokenizer(images)
        recon_loss = reconstruction_loss(recon.float(), images, args.object_weight, args.loss)
        loss = recon_loss + aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{recon_loss.item():.4f}")
            run.log({"loss": recon_loss.item(), "aux_loss": aux_loss.item(), "lr": args.lr * lr_factor(step)}, step=step)
    else:
        step = args.steps
    train_seconds = time.monotonic() - start

    tokenizer.eval()
    metrics = {"steps": step, "train_seconds": round(train_seconds, 1), "val_images": len(val_examples), **tokenizer_metrics(tokenizer, val_examples),
               "skipped_rows": train_source.skipped + val_source.skipped}
    metrics["wall_seconds"] = round(time.monotonic() - began, 1)
    if metrics["skipped_rows"]:  # train rows are checked for text up front, images as they are drawn
        print(f"skipped {metrics['skipped_rows']} rows (empty text or unreadable image)")
    tokenizer.save(out)
    write_json(out / "metrics.json", metrics)
    run.summary.update(metrics)
    run.finish()
    summary = (f"vq: {metrics['steps']} steps in {train_seconds:.0f}s ({metrics['wall_seconds']:.0f}s in all), val PSNR {metrics['psnr_db']:.2f} dB, SSIM {metrics['ssim']:.3f}, "
               f"codebook usage {metrics['codebook_usage']:.1%} ({metrics['codes_used']}/{tokenizer.num_codes})")
    if "parser_object_accuracy" in metrics:
        summary += (f", parser reads {metrics['parser_object_accuracy']:.1%} of objects "
                    f"({metrics['parser_image_exact']:.1%} of images exactly)")
    print(summary + f" -> {out}")
    return metrics


def main() -> None:
    train(parse_args())


if __name__ == "__main__":
    run_main(main)
