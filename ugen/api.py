"""`ugen.load(dir)`: a trained model directory as an object that captions, answers, draws and writes.

Every method draws through the one sampling engine (`ugen.sampling.Engine`), so the CLI, the eval
suite and RL see the same model behaviour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import PIL.Image
import torch

from ugen.data import square_rgb
from ugen.errors import UserError
from ugen.model import load_transformer, read_meta
from ugen.runtime import pick_device
from ugen.sampling import Engine, SamplingParams
from ugen.schedule import VocabSchedule
from ugen.sequences import caption_prompt, plan_prompt, t2i_prompt, text_qa_prompt, vqa_prompt
from ugen.text_tokenizer import load_text_tokenizer
from ugen.vocab import Vocab
from ugen.image_tokenizers import encode_images, load_image_tokenizer, to_uint8

ImageLike = Union[str, os.PathLike, PIL.Image.Image, np.ndarray]

# Chosen by eval/sampling_sweep.py on validation prompts for a model that plans (README, "Sampling
# defaults"; benchmarks/experiments.md): its greedy plan is the likeliest layout for the prompt,
# and with the places fixed a cool image follows it (GenEval 0.519 at the old T 1.15 with a plan
# at 1, 0.883 here). A model without a plan wanted T 1.15: pass it (--temperature 1.15).
GENERATE_DEFAULTS = SamplingParams(temperature=0.4, top_k=0, top_p=1.0, cfg=2.0, plan_temperature=0.0)
GREEDY = SamplingParams(temperature=0.0)
# The text of a text with images inside it (`UGen.write`; its images are drawn as `generate` draws):
# sampled, so that the model writes scenes of its own after the prompt's.
WRITE_DEFAULTS = SamplingParams(temperature=1.0)
PLAN_TOKENS = 96  # the longest plan (five objects take about 40 pieces); <boi> is forced after it
ROWS_PER_CALL = 128  # sequences decoded together; bounds memory on long prompt lists


def read_image(image: ImageLike, size: int) -> np.ndarray:
    """Any image PIL can open (path, PIL image or uint8 array) as (size, size, 3) uint8 RGB."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise UserError(f"an image array must be uint8 (H, W) or (H, W, C), not {image.dtype} {image.shape}")
        image = PIL.Image.fromarray(image)
    if not isinstance(image, PIL.Image.Image):
        path = Path(image)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        try:
            image = PIL.Image.open(path)
            image.load()
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
            raise UserError(f"{path}: not an image PIL can read") from None
    return square_rgb(image, size)


def trained_codes(meta: dict) -> torch.Tensor | None:
    """The image codes a model directory's training switched on, bool (num_image,), or None (all)
    when its ugen.json lacks the schedule or the step. A model saved before its progressive
    vocabulary schedule finished never trained the rest: their rows are still at initialization."""
    if "schedule" not in meta or "step" not in meta:
        return None
    # "step" counts the steps done: the last one trained, step - 1, had the most codes on.
    return VocabSchedule.from_dict(meta["schedule"]).active_codes(meta["step"] - 1)


class UGen:
    def __init__(self, directory: str | os.PathLike, device: str | torch.device = "auto", dtype: torch.dtype | None = None):
        directory = Path(directory)
        self.meta = read_meta(directory)
        self.device = pick_device(device) if isinstance(device, str) else device
        self.vocab = Vocab.from_dict(self.meta["vocab"])
        self.text = load_text_tokenizer(directory / self.meta["text_tokenizer"])
        self.image_tokenizer = load_image_tokenizer(directory / self.meta["vq"], device=self.device)
        self.model = load_transformer(directory, self.device, dtype)
        self.engine = Engine(self.model, self.vocab, self.image_tokenizer.grid, active_image=trained_codes(self.meta))
        self.image_size = self.image_tokenizer.image_size
        self.image_len = self.image_tokenizer.grid**2  # codes of an image
        self.span_len = self.vocab.span_length(self.image_len)  # its tokens between <boi> and <eoi> (row ends too)
        self.max_len = self.meta.get("max_len", self.model.config.max_position_embeddings)  # the trained length
        self.directory = directory

    # -- helpers ------------------------------------------------------------------------------
    def image_codes(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(N, grid*grid) VQ codes of any images `read_image` takes."""
        return encode_images(self.image_tokenizer, np.stack([read_image(i, self.image_size) for i in images]))

    def text_ids(self, text: str, what: str) -> list[int]:
        """The text pieces of `text` (stripped); an empty one is a UserError naming `what` it is."""
        if not text or not text.strip():
            raise UserError(f"the {what} is empty")
        return self.text.encode(text.strip())

    def decode_text(self, ids: list[int]) -> str:
        return self.text.decode(self.vocab.to_text(ids)).strip()

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def run(self, prompts: list[list[int]], params: SamplingParams,
            generator: torch.Generator | Sequence[torch.Generator], **kwargs) -> list[list[int]]:
        """`Engine.generate` in chunks of ROWS_PER_CALL; one generator across them, or one per prompt."""
        out = []
        uncond = kwargs.pop("uncond_prompts", None)
        for start in range(0, len(prompts), ROWS_PER_CALL):
            chunk = slice(start, start + ROWS_PER_CALL)
            out += self.engine.generate(
                prompts[chunk], params=params,
                generator=generator if isinstance(generator, torch.Generator) else generator[chunk],
                uncond_prompts=None if uncond is None else uncond[chunk], **kwargs,
            )
        return out

    # -- token level: prompts and sampled rows, what RL scores and trains on ----------------------
    def draw_captions(self, codes: np.ndarray, params: SamplingParams, generator: torch.Generator,
                      max_new_tokens: int = 64) -> tuple[list[list[int]], list[list[int]]]:
        """Caption prompts for (N, grid*grid) image codes and the sampled rows (text pieces, then
        <eos> unless cut)."""
        prompts = [caption_prompt(self.vocab, c) for c in codes]
        return prompts, self.run(prompts, params, generator, max_new_tokens=max_new_tokens)

    @property
    def plans(self) -> bool:
        """Whether this model writes a plan (the scene's layout as text) before it draws: pretrained
        with --plan."""
        return bool(self.meta.get("plan")) and "<plan>" in self.vocab.specials

    def draw_plans(self, captions: Sequence[list[int]], params: SamplingParams,
                   generator: torch.Generator | Sequence[torch.Generator]) -> list[list[int] | None]:
        """The plan the model writes for each caption (text-piece ids, at `params.plan_temperature`
        with no guidance: its counts and places are what the prompt leaves open), up to the <boi>
        that ends it; None for an empty caption (the unconditional prompt has no plan) or a model
        that does not plan."""
        planned = [i for i, c in enumerate(captions) if self.plans and c]
        plans: list[list[int] | None] = [None] * len(captions)
        if not planned:
            return plans
        prompts = [plan_prompt(self.vocab, captions[i]) for i in planned]
        room = self.max_len - self.span_len - 2 - max(len(p) for p in prompts)  # <boi> codes <eoi> must fit
        gens = generator if isinstance(generator, torch.Generator) else [generator[i] for i in planned]
        rows = self.run(prompts, SamplingParams(temperature=params.plan_temperature), gens, allow_images=True,
                        stop_ids=(self.vocab.boi, self.vocab.eos), max_new_tokens=max(1, min(PLAN_TOKENS, room)))
        for i, row in zip(planned, rows):
            plans[i] = self.vocab.to_text(row)  # the stop (<boi> or <eos>) left out
        return plans

    def plan_of(self, prompt: Sequence[int]) -> str | None:
        """The plan inside a generation prompt (`draw_codes`' first result) as text, or None."""
        v = self.vocab
        if "<plan>" not in v.specials or v.plan not in prompt:
            return None
        start = list(prompt).index(v.plan) + 1
        end = list(prompt).index(v.boi, start) if v.boi in prompt[start:] else len(prompt)
        return self.decode_text(list(prompt[start:end]))

    def draw_codes(self, captions: Sequence[list[int]], params: SamplingParams,
                   generator: torch.Generator | Sequence[torch.Generator]) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
        """Images for captions given as text-piece ids, with CFG (`params.cfg`; an empty caption is
        the unconditional prompt): the generation prompts, the sampled rows (codes, then <eoi>) and
        the (N, grid*grid) codes. A model that plans first writes each caption's plan
        (`draw_plans`), which then ends its prompt (`plan_of` reads it back); the guidance is
        against the unconditional prompt either way, as training dropped caption and plan together."""
        plans = self.draw_plans(captions, params, generator)
        prompts = [t2i_prompt(self.vocab, c, plan) for c, plan in zip(captions, plans)]
        uncond = [t2i_prompt(self.vocab, None)] * len(prompts)
        rows = self.run(prompts, params, generator, uncond_prompts=uncond, max_new_tokens=self.span_len + 1,
                         stop_ids=(self.vocab.eoi,))
        return prompts, rows, np.array([self.vocab.to_codes(r)[: self.image_len] for r in rows], dtype=np.int64)

    # -- the four uses ------------------------------------------------------------------------
    def caption(self, images: Sequence[ImageLike], params: SamplingParams = GREEDY, seed: int = 0, max_new_tokens: int = 64) -> list[str]:
        """One caption per image (greedy by default)."""
        _, rows = self.draw_captions(self.image_codes(images), params, self.generator(seed), max_new_tokens)
        return [self.decode_text(ids) for ids in rows]

    def answer(self, images: Sequence[ImageLike], questions: Sequence[str], params: SamplingParams = GREEDY, seed: int = 0) -> list[str]:
        """Answer `questions[i]` about `images[i]`."""
        if len(images) != len(questions):
            raise ValueError("one question per image")
        prompts = [vqa_prompt(self.vocab, c, self.text_ids(q, "question")) for c, q in zip(self.image_codes(images), questions)]
        return [self.decode_text(ids) for ids in self.run(prompts, params, self.generator(seed), max_new_tokens=16)]

    def answer_text(self, passages: Sequence[str], questions: Sequence[str], params: SamplingParams = GREEDY, seed: int = 0) -> list[str]:
        """Answer `questions[i]` from the text `passages[i]` alone (no image)."""
        if len(passages) != len(questions):
            raise ValueError("one question per passage")
        prompts = [text_qa_prompt(self.vocab, self.text_ids(p, "passage"), self.text_ids(q, "question"))
                   for p, q in zip(passages, questions)]
        return [self.decode_text(ids) for ids in self.run(prompts, params, self.generator(seed), max_new_tokens=16)]

    def ask(self, image: ImageLike, question: str, params: SamplingParams = GREEDY, seed: int = 0) -> str:
        return self.answer([image], [question], params, seed)[0]

    def generate_codes(self, prompts: Sequence[str], num: int = 1, params: SamplingParams = GENERATE_DEFAULTS, seed: int = 0) -> np.ndarray:
        """(len(prompts) * num, grid*grid) codes, `num` consecutive rows per prompt."""
        ids = [self.text_ids(p, "prompt") for p in prompts for _ in range(num)]
        return self.draw_codes(ids, params, self.generator(seed))[2]

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """(N, grid*grid) codes -> (N, H, W, 3) uint8 images."""
        with torch.no_grad():
            return to_uint8(self.image_tokenizer.decode(torch.as_tensor(codes, device=self.device)))

    def generate(self, prompt: str, num: int = 1, params: SamplingParams = GENERATE_DEFAULTS, seed: int = 0) -> list[PIL.Image.Image]:
        """`num` images drawn from the caption `prompt`, with CFG (`params.cfg`)."""
        return self.generate_with_plans(prompt, num, params, seed)[0]

    def generate_with_plans(self, prompt: str, num: int = 1, params: SamplingParams = GENERATE_DEFAULTS,
                            seed: int = 0) -> tuple[list[PIL.Image.Image], list[str | None]]:
        """`generate`, with the plan each image was drawn from (None for a model that does not plan)."""
        if num < 1:
            raise UserError(f"the number of images must be >= 1, not {num}")
        ids = [self.text_ids(prompt, "prompt")] * num
        prompts, _, codes = self.draw_codes(ids, params, self.generator(seed))
        return [PIL.Image.fromarray(i) for i in self.decode_codes(codes)], [self.plan_of(p) for p in prompts]

    def parts(self, ids: Sequence[int]) -> list[str | PIL.Image.Image]:
        """A sampled row with images inside its text as its parts in order: the text between images
        (empty runs left out) and each complete image (an image cut short by the length is dropped)."""
        v, parts, text, codes = self.vocab, [], [], None
        for t in ids:
            if codes is None and t == v.boi:
                parts.append(self.decode_text(text))
                text, codes = [], []
            elif codes is not None and t == v.eoi:
                parts.append(np.array(v.to_codes(codes)) if len(codes) == self.image_len else "")
                codes = None
            elif codes is not None:
                codes += [t] if t >= v.image_start else []  # a row end is no code
            else:
                text.append(t)
        parts.append(self.decode_text(text))
        parts = [p for p in parts if not isinstance(p, str) or p]
        drawn = [p for p in parts if isinstance(p, np.ndarray)]
        images = iter(self.decode_codes(np.stack(drawn)) if drawn else [])
        return [p if isinstance(p, str) else PIL.Image.fromarray(next(images)) for p in parts]

    @property
    def trained_interleaved(self) -> bool:
        """Whether interleaved rows were in this model's training mixture (else it seldom opens an
        image inside text)."""
        return self.meta.get("pretrain", {}).get("mix", {}).get("interleaved", 0) > 0

    def write_prompt(self, prompt: str) -> list[int]:
        """The row `write` continues; a prompt that leaves no room to write is a UserError."""
        ids = [self.vocab.bos, *self.vocab.from_text(self.text_ids(prompt, "prompt"))]
        if len(ids) >= self.max_len:
            raise UserError(f"the prompt is too long: {len(ids)} tokens, the model takes {self.max_len}")
        return ids

    def draw_interleaved(self, prompts: list[list[int]], budgets: Sequence[int], params: SamplingParams,
                         image_params: SamplingParams,
                         generator: torch.Generator | Sequence[torch.Generator]) -> list[list[int]]:
        """The new ids of each prompt (`write_prompt`), at most `budgets[i]` of them: text (with
        `params`) until the model opens an image or ends, then the image drawn with guidance
        (`image_params`; its cfg against the unconditional generation prompt, so the image follows
        the text before it as `generate` follows a caption), then text again, and so on.

        One engine call per stretch of text or image for all rows still writing; with one generator
        per prompt, each row draws what it would draw alone."""
        rows, new = [list(p) for p in prompts], [[] for _ in prompts]
        generators = generator if not isinstance(generator, torch.Generator) else None
        writing = [i for i, b in enumerate(budgets) if b > 0]
        while writing:
            gens = generator if generators is None else [generators[i] for i in writing]
            drawn = self.run([rows[i] + new[i] for i in writing], params, gens, allow_images=True,
                             stop_ids=(self.vocab.eos, self.vocab.boi),
                             max_new_tokens=max(budgets[i] - len(new[i]) for i in writing))
            opened = []
            for i, ids in zip(writing, drawn):
                new[i] += ids[: budgets[i] - len(new[i])]
                if new[i][-1:] == [self.vocab.boi] and len(new[i]) < budgets[i]:
                    opened.append(i)
            if not opened:
                break
            gens = generator if generators is None else [generators[i] for i in opened]
            uncond = [t2i_prompt(self.vocab, None)] * len(opened)
            drawn = self.run([rows[i] + new[i] for i in opened], image_params, gens, uncond_prompts=uncond,
                             max_new_tokens=self.span_len + 1, stop_ids=(self.vocab.eoi,))
            for i, ids in zip(opened, drawn):
                new[i] += ids[: budgets[i] - len(new[i])]
            writing = [i for i in opened if len(new[i]) < budgets[i]]
        return new

    def write(self, prompts: Sequence[str], params: SamplingParams = WRITE_DEFAULTS, seed: int = 0,
              max_new_tokens: int | None = None,
              image_params: SamplingParams = GENERATE_DEFAULTS) -> list[list[str | PIL.Image.Image]]:
        """Continue each text prompt and let the model draw images inside the text wherever it opens
        one (interleaved rows in its training mixture teach it to): for each, the prompt and its
        continuation as text and image parts in order. Text is sampled with `params`, images with
        `image_params` (guided, see `draw_interleaved`). Up to `max_new_tokens` new tokens, and no
        further than the model's trained length (the default)."""
        rows = [self.write_prompt(p) for p in prompts]
        budgets = [min(max_new_tokens or self.max_len, self.max_len - len(r)) for r in rows]
        new = self.draw_interleaved(rows, budgets, params, image_params, self.generator(seed))
        return [self.parts(r + n) for r, n in zip(rows, new)]

    def complete(self, prompt: str, params: SamplingParams = GREEDY, seed: int = 0, max_new_tokens: int = 64) -> str:
        """Continue a text prompt; returns the prompt and its continuation as one text."""
        ids = [self.vocab.bos, *self.vocab.from_text(self.text_ids(prompt, "prompt"))]
        return self.decode_text(ids + self.run([ids], params, self.generator(seed), max_new_tokens=max_new_tokens)[0])


def save_parts(parts: Sequence[str | PIL.Image.Image], path: str | os.PathLike, upscale: int = 1) -> list[Path]:
    """A sample of text with images inside it (`UGen.write`) as Markdown at `path` (FILE.md) with
    its images beside it as FILE-1.png, FILE-2.png, ... (enlarged `upscale` times, nearest
    neighbour); returns the files written, the Markdown first."""
    path = Path(path)
    lines, written = [], []
    for part in parts:
        if isinstance(part, str):
            lines.append(part)
            continue
        image = path.with_name(f"{path.stem}-{len(written) + 1}.png")
        part.resize((part.width * upscale, part.height * upscale), resample=0).save(image)
        written.append(image)
        lines.append(f"![image {len(written)}]({image.name})")
    path.write_text("\n\n".join(lines) + "\n")
    return [path, *written]


def load(directory: str | os.PathLike, device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> UGen:
    """Load a model directory written by `train/pretrain.py` (or RL); weights in bf16 on CUDA and
    fp32 on the CPU unless `dtype` says otherwise."""
    return UGen(directory, device, dtype)
