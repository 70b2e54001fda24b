"""What `ugen serve` is asked to do, and how requests that arrived together share one engine call.

A task is one request. Tasks whose `group` is equal can be merged: every caption, answer and text
continuation with the same sampling parameters is one batch of text rows, every text with images
inside it (`write`) one batch of such rows, every drawing with the same parameters one batch of
image rows (with CFG). Each task keeps its own seed: its rows draw
their noise from their own generator (`Engine.generate` with one generator per prompt), so a seed
gives the same output batched or alone, the same as `ugen.load(dir).caption / ask / complete /
write / generate` with that seed.

Only the transformer's rows are batched. The VQ tokenizer encodes and decodes each request's images
on their own, as a request alone would: its convolutions round differently at another batch size,
which moved some pixels of a decoded image by one level (3 of 24 images in benchmarks/serve_load.py
before this), and that could move a code of an encoded one. They cost little beside decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Union

import numpy as np
import PIL.Image

from ugen.api import UGen
from ugen.sampling import SamplingParams
from ugen.sequences import caption_prompt, vqa_prompt

Kind = Literal["caption", "ask", "text", "write", "generate"]
# a text; a drawing's images and the plan of each (None where the model does not plan); parts
Result = Union[str, tuple[list[PIL.Image.Image], list[Union[str, None]]], list[Union[str, PIL.Image.Image]]]

CAPTION_TOKENS = 64  # as `UGen.caption`
ANSWER_TOKENS = 16  # as `UGen.answer`


@dataclass(frozen=True, eq=False)
class Task:
    kind: Kind
    params: SamplingParams
    seed: int = 0
    text: str = ""  # the question (ask) or the prompt (text, write, generate)
    image: np.ndarray | None = None  # (S, S, 3) uint8 at the model's size (caption, ask)
    num: int = 1  # images to draw (generate)
    max_new_tokens: int = CAPTION_TOKENS  # text only
    image_params: SamplingParams | None = None  # write: how its images are drawn

    @property
    def rows(self) -> int:
        """Sequences this task adds to an engine call (CFG's unconditional rows not counted)."""
        return self.num if self.kind == "generate" else 1

    @property
    def group(self) -> tuple:
        """Tasks with equal groups can run in one engine call."""
        return ({"generate": "image", "write": "write"}.get(self.kind, "text"), self.params, self.image_params)


def run_group(model: UGen, tasks: list[Task], abandoned: Callable[[], bool] | None = None) -> list[Result]:
    """Run tasks of one group in one engine call; one result per task, in order. Once `abandoned()`
    is true (nobody waits for any of them), the call stops at its next step (`Abandoned`)."""
    if len({t.group for t in tasks}) != 1:
        raise ValueError("tasks of different groups cannot share an engine call")
    model.engine.should_stop = abandoned  # the server's one engine thread is the only caller here
    try:
        return _draw(model, tasks) if tasks[0].kind == "generate" else _write(model, tasks)
    finally:
        model.engine.should_stop = None


def _draw(model: UGen, tasks: list[Task]) -> list[Result]:
    captions, generators = [], []
    for task in tasks:
        generator = model.generator(task.seed)  # one generator for all of a task's images, as `UGen.generate`
        captions += [model.text_ids(task.text, "prompt")] * task.num
        generators += [generator] * task.num
    prompts, _, codes = model.draw_codes(captions, tasks[0].params, generators)
    out, start = [], 0
    for task in tasks:  # decoded per request: see the module docstring
        images = [PIL.Image.fromarray(i) for i in model.decode_codes(codes[start : start + task.num])]
        out.append((images, [model.plan_of(p) for p in prompts[start : start + task.num]]))
        start += task.num
    return out


def _write(model: UGen, tasks: list[Task]) -> list[Result]:
    """Captions, answers, continuations and texts with images: rows cut each at its own length."""
    v, prompts = model.vocab, []
    for task in tasks:
        if task.kind == "write":
            prompts.append(model.write_prompt(task.text))
        elif task.kind == "caption":  # encoded per request: see the module docstring
            prompts.append(caption_prompt(v, model.image_codes([task.image])[0]))
        elif task.kind == "ask":
            prompts.append(vqa_prompt(v, model.image_codes([task.image])[0], model.text_ids(task.text, "question")))
        else:
            prompts.append([v.bos, *v.from_text(model.text_ids(task.text, "prompt"))])
    generators = [model.generator(t.seed) for t in tasks]
    # A row's first m tokens do not depend on how many more are drawn after them: the longest
    # length for all, then each row cut to its own, is what each alone would give.
    if tasks[0].kind == "write":  # as `UGen.write`: no further than the model's length
        budgets = [min(t.max_new_tokens, model.max_len - len(p)) for t, p in zip(tasks, prompts)]
        rows = model.draw_interleaved(prompts, budgets, tasks[0].params, tasks[0].image_params, generators)
        return [model.parts(p + r) for p, r in zip(prompts, rows)]
    rows = model.run(prompts, tasks[0].params, generators, max_new_tokens=max(t.max_new_tokens for t in tasks))
    out = []
    for task, prompt, row in zip(tasks, prompts, rows):
        row = row[: task.max_new_tokens]
        out.append(model.decode_text(prompt + row if task.kind == "text" else row))
    return out
