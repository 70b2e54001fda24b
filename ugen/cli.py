"""The `ugen` command: serve a trained model directory.

    ugen caption  --model DIR IMAGE...                       one caption per image, one line each
    ugen ask      --model DIR --image IMG --question Q       one answer
    ugen generate --model DIR --prompt P --out FILE.png [--num N] [--cfg S] [--seed K] [--show-plan]
    ugen text     --model DIR --prompt P                     the prompt and its continuation
    ugen text     --model DIR --prompt P --images --out F.md  text with images inside it: F.md, F-1.png ...
    ugen serve    --model DIR [--host H] [--port P]          HTTP API and web page (ugen/serve)

With --num N > 1, `generate` writes numbered files FILE-1.png ... FILE-N.png beside FILE.png.
Bad input (a missing file, a file that is not an image, an empty prompt, a directory that is not a
model) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from ugen.api import GENERATE_DEFAULTS, GREEDY, WRITE_DEFAULTS, load, read_image, save_parts
from ugen.errors import UserError
from ugen.runtime import run_main
from ugen.sampling import SamplingParams


def _sampling_args(parser: argparse.ArgumentParser, defaults: SamplingParams) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy")
    group.add_argument("--top-k", type=int, default=defaults.top_k, help="keep the k likeliest ids (0: all)")
    group.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus mass to keep (1: all)")
    group.add_argument("--seed", type=int, default=0, help="sampling seed")


def _params(args: argparse.Namespace, cfg: float = 1.0) -> SamplingParams:
    try:
        plan = getattr(args, "plan_temperature", GENERATE_DEFAULTS.plan_temperature)
        return SamplingParams(args.temperature, args.top_k, args.top_p, cfg, plan_temperature=plan)
    except ValueError as err:
        raise UserError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ugen", description="Caption, answer, draw and write with a ugen model.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, defaults: SamplingParams) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--model", required=True, help="model directory (e.g. runs/default/model)")
        sub.add_argument("--device", default="auto", help="auto, cpu or cuda")
        _sampling_args(sub, defaults)
        return sub

    sub = command("caption", "caption each image, one line each", GREEDY)
    sub.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")

    sub = command("ask", "answer a question about an image", GREEDY)
    sub.add_argument("--image", required=True, help="image file")
    sub.add_argument("--question", required=True, help="the question")

    sub = command("generate", "draw images from a caption", GENERATE_DEFAULTS)
    sub.add_argument("--prompt", required=True, help="the caption to draw, e.g. 'a red circle'")
    sub.add_argument("--out", required=True, help="PNG to write; with --num N > 1, FILE-1.png ... FILE-N.png")
    sub.add_argument("--num", type=int, default=1, help="images to draw")
    sub.add_argument("--cfg", type=float, default=GENERATE_DEFAULTS.cfg, help="classifier-free guidance scale (1: off)")
    sub.add_argument("--upscale", type=int, default=1, help="enlarge the written PNGs by this factor (nearest neighbour)")
    sub.add_argument("--plan-temperature", type=float, default=GENERATE_DEFAULTS.plan_temperature,
                     help="temperature of the plan a model pretrained with --plan writes before it draws")
    sub.add_argument("--show-plan", action="store_true",
                     help="print the plan each image was drawn from after its path (a model pretrained with --plan "
                          "writes the scene's layout before it draws)")

    sub = command("text", "continue a text prompt", GREEDY)
    sub.add_argument("--prompt", required=True, help="text to continue")
    sub.add_argument("--max-new-tokens", type=int, default=None,
                     help="longest continuation (default: 64; with --images, the rest of the model's length)")
    sub.add_argument("--images", dest="with_images", action="store_true",
                     help="let the model draw images inside the text (the text sampled at temperature 1 unless "
                          "told): writes --out as Markdown with the PNGs beside it")
    sub.add_argument("--out", default=None, help="with --images: the Markdown file to write (FILE.md)")
    sub.add_argument("--upscale", type=int, default=1, help="with --images: enlarge the PNGs by this factor")
    sub.add_argument("--cfg", type=float, default=GENERATE_DEFAULTS.cfg,
                     help="with --images: their guidance scale (they are drawn as `generate` draws)")
    sub.set_defaults(temperature=None)  # 0 (greedy), or 1 with --images

    sub = commands.add_parser("serve", help="serve the model over HTTP: a JSON API and a web page",
                              description="Serve the model over HTTP: a JSON API and a web page at /.")
    sub.add_argument("--model", required=True, help="model directory (e.g. runs/default/model)")
    sub.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sub.add_argument("--port", type=int, default=8000, help="port to listen on")
    sub.add_argument("--max-rows", type=int, default=32, help="most sequences (images, texts) in one engine call")
    sub.add_argument("--window-ms", type=float, default=10, help="how long a batch waits for requests to join it")
    sub.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond which the server answers 503")
    sub.add_argument("--timeout", type=float, default=60, help="seconds a request may take before it is answered 504")
    sub.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                     help="a site whose pages may call the API (e.g. https://lab.example.org; repeat for more): "
                          "a POST whose Origin is another site than the server's own is refused with 403")
    sub.add_argument("--max-pixels", type=int, default=None,
                     help="the most pixels of an uploaded image (default: 4096x4096 for models up to 256 px, "
                          "then 16 model sides a side); larger ones are refused from their header, undecoded")
    return parser


def output_paths(out: str, num: int) -> list[Path]:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {out}: must be a .png file")
    if not path.parent.is_dir():
        raise UserError(f"--out {out}: directory {path.parent} does not exist")
    if num == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, num + 1)]


def serve(args: argparse.Namespace) -> None:
    import uvicorn  # the server's imports only where it is served

    from ugen.serve import create_app

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, not {args.port}")
    if args.max_rows < 1 or args.max_queue < 1 or args.window_ms < 0 or args.timeout <= 0:
        raise UserError("--max-rows and --max-queue must be >= 1, --window-ms >= 0 and --timeout > 0")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, not {args.max_pixels}")
    for origin in args.allow_origin:
        if not re.fullmatch(r"https?://[^/\s]+", origin.rstrip("/")):
            raise UserError(f"--allow-origin {origin}: must be a site's origin, scheme and host (https://lab.example.org)")
    app = create_app(args.model, args.device, args.max_rows, args.window_ms, args.max_queue, args.timeout,
                     allow_origins=tuple(args.allow_origin), max_pixels=args.max_pixels)
    print(f"ugen: serving {args.model} at http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "generate":  # check what can be checked before loading the model
        if args.num < 1:
            raise UserError(f"--num must be >= 1, not {args.num}")
        if args.upscale < 1:
            raise UserError(f"--upscale must be >= 1, not {args.upscale}")
        paths = output_paths(args.out, args.num)
    if args.command == "text" and args.with_images:
        if args.out is None or Path(args.out).suffix.lower() != ".md":
            raise UserError("--images writes a Markdown file: give --out FILE.md")
        if not Path(args.out).parent.is_dir():
            raise UserError(f"--out {args.out}: directory {Path(args.out).parent} does not exist")
        if args.upscale < 1:
            raise UserError(f"--upscale must be >= 1, not {args.upscale}")
    if args.command == "text" and args.temperature is None:  # greedy text; images inside it are sampled
        args.temperature = (WRITE_DEFAULTS if args.with_images else GREEDY).temperature
    if args.command == "text" and args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, not {args.max_new_tokens}")
    if getattr(args, "prompt", None) is not None and not args.prompt.strip():
        raise UserError("the prompt is empty")
    if getattr(args, "question", None) is not None and not args.question.strip():
        raise UserError("the question is empty")
    for image in args.images if args.command == "caption" else [args.image] if args.command == "ask" else []:
        read_image(image, 8)  # a missing or unreadable image fails before the model is loaded
    model = load(args.model, args.device)

    if args.command == "caption":
        for line in model.caption(args.images, _params(args), args.seed):
            print(line)
    elif args.command == "ask":
        print(model.ask(args.image, args.question, _params(args), args.seed))
    elif args.command == "generate":
        images, plans = model.generate_with_plans(args.prompt, args.num, _params(args, args.cfg), args.seed)
        for image, plan, path in zip(images, plans, paths):
            if args.upscale > 1:
                image = image.resize((image.width * args.upscale, image.height * args.upscale), resample=0)
            image.save(path)
            print(f"{path}\t{plan if plan is not None else '(this model draws without a plan)'}" if args.show_plan else path)
    elif args.with_images:
        image_params = dataclasses.replace(GENERATE_DEFAULTS, cfg=args.cfg)
        parts = model.write([args.prompt], _params(args), args.seed, args.max_new_tokens, image_params)[0]
        if not model.trained_interleaved:
            print(f"ugen: {args.model} was trained without interleaved rows (--mix ...,interleaved=W): "
                  "it seldom draws images inside text", file=sys.stderr)
        for path in save_parts(parts, args.out, args.upscale):
            print(path)
    else:
        print(model.complete(args.prompt, _params(args), args.seed, args.max_new_tokens or 64))


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
