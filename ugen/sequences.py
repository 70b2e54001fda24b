"""The six sequence formats and the batches built from them.

    text         bos text eos
    text_qa      bos passage question <answer> answer eos        (reading comprehension, no image)
    caption      bos boi codes eoi <caption> caption eos
    vqa          bos boi codes eoi question <answer> answer eos
    t2i          bos <gen> caption boi codes eoi eos        (caption dropped with prob p, for CFG)
                 bos <gen> caption <plan> layout boi codes eoi eos
                 (pretraining with --plan: the scene's layout is written first, then drawn from;
                 a dropped caption drops its layout too)
    interleaved  bos caption boi codes eoi caption boi codes eoi ... eos
                 (a few scenes described one after another, each followed by its image: text with
                 images inside it, which `UGen.write` samples)

Each row carries a loss mask: the model is trained on what the task asks it to produce (the whole
passage, the caption, the answer, the image), not on the conditioning it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ugen.vocab import Vocab

TASKS = ("text", "text_qa", "caption", "vqa", "t2i", "interleaved")
TEXT_TASKS = ("text", "text_qa")  # what phase 0 of the vocabulary schedule trains on
IGNORE = -100  # label value that cross-entropy skips
INTERLEAVED_SCENES = 3  # most scenes in an interleaved row (fewer where they would not fit the row length)


@dataclass
class Row:
    ids: list[int]
    loss_from: int  # targets at positions >= loss_from are trained on
    task: str


def text_row(vocab: Vocab, text: list[int]) -> Row:
    return Row([vocab.bos, *vocab.from_text(text), vocab.eos], 0, "text")


def text_qa_prompt(vocab: Vocab, passage: list[int], question: list[int]) -> list[int]:
    return [vocab.bos, *vocab.from_text(passage), *vocab.from_text(question), vocab.answer]


def text_qa_row(vocab: Vocab, passage: list[int], question: list[int], answer: list[int]) -> Row:
    prompt = text_qa_prompt(vocab, passage, question)
    return Row([*prompt, *vocab.from_text(answer), vocab.eos], len(prompt) - 1, "text_qa")


def caption_prompt(vocab: Vocab, codes) -> list[int]:
    return [vocab.bos, vocab.boi, *vocab.image_span(codes), vocab.eoi, vocab.caption]


def caption_row(vocab: Vocab, codes, caption: list[int]) -> Row:
    prompt = caption_prompt(vocab, codes)
    return Row([*prompt, *vocab.from_text(caption), vocab.eos], len(prompt) - 1, "caption")


def vqa_prompt(vocab: Vocab, codes, question: list[int]) -> list[int]:
    return [vocab.bos, vocab.boi, *vocab.image_span(codes), vocab.eoi, *vocab.from_text(question), vocab.answer]


def vqa_row(vocab: Vocab, codes, question: list[int], answer: list[int]) -> Row:
    prompt = vqa_prompt(vocab, codes, question)
    return Row([*prompt, *vocab.from_text(answer), vocab.eos], len(prompt) - 1, "vqa")


def plan_prompt(vocab: Vocab, caption: list[int]) -> list[int]:
    """What a model trained with plans continues with the layout's text, then <boi>."""
    return [vocab.bos, vocab.gen, *vocab.from_text(caption), vocab.plan]


def t2i_prompt(vocab: Vocab, caption: list[int] | None, plan: list[int] | None = None) -> list[int]:
    """The generation prompt, up to <boi>; `caption=None` is the unconditional prompt used for
    CFG. With a `plan` (text-piece ids of a layout), the prompt written and then planned."""
    if plan is not None:
        return [*plan_prompt(vocab, caption or []), *vocab.from_text(plan), vocab.boi]
    return [vocab.bos, vocab.gen, *vocab.from_text(caption or []), vocab.boi]


def t2i_row(vocab: Vocab, caption: list[int] | None, codes, plan: list[int] | None = None) -> Row:
    """The loss covers the image and, with a plan, the plan and the <boi> that ends it."""
    prompt = t2i_prompt(vocab, caption, plan)
    loss_from = len(plan_prompt(vocab, caption or [])) - 1 if plan is not None else len(prompt) - 1
    return Row([*prompt, *vocab.image_span(codes), vocab.eoi, vocab.eos], loss_from, "t2i")


def interleaved_row(vocab: Vocab, scenes: Sequence[tuple[list[int], Sequence[int]]]) -> Row:
    """(caption, codes) pairs as one text with each scene's image after its caption; all of it is
    trained on, text and images alike."""
    ids = [vocab.bos]
    for caption, codes in scenes:
        ids += [*vocab.from_text(caption), vocab.boi, *vocab.image_span(codes), vocab.eoi]
    return Row([*ids, vocab.eos], 0, "interleaved")


def collate(rows: list[Row], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into (B, T) inputs, labels and attention mask; rows longer than max_len are cut."""
    rows = [Row(r.ids[:max_len], r.loss_from, r.task) for r in rows]
    length = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, T)
    for b, row in enumerate(rows):
        n = len(row.ids)
        ids[b, :n] = torch.tensor(row.ids)
        mask[b, :n] = 1
        # labels[t] is the target for position t, i.e. ids[t + 1]
        labels[b, row.loss_from : n - 1] = ids[b, row.loss_from + 1 : n]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pack(bins: list[list[Row]], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows laid end to end into (S, length) sequences, one per bin, with the positions of each row
    counting from 0: with no attention mask, transformers reads the restarts in `position_ids` as
    row boundaries (a block-diagonal causal mask for SDPA, varlen kernels for flash-attn), so no
    row sees another. Every batch has the same shape, and no compute goes to padding beyond each
    bin's unfilled tail (its own segment, never a target)."""
    ids = torch.full((len(bins), length), pad_id, dtype=torch.long)  # (S, L)
    labels = torch.full((len(bins), length), IGNORE, dtype=torch.long)  # (S, L)
    positions = torch.zeros((len(bins), length), dtype=torch.long)  # (S, L)
    for s, rows in enumerate(bins):
        start = 0
        for row in rows:
            n = len(row.ids)
            if start + n > length:
                raise ValueError(f"bin {s} holds {start + n} tokens, more than {length}")
            ids[s, start : start + n] = torch.tensor(row.ids)
            positions[s, start : start + n] = torch.arange(n)
            # labels[t] is the target for position t, i.e. ids[t + 1], within the row
            labels[s, start + row.loss_from : start + n - 1] = ids[s, start + row.loss_from + 1 : start + n]
            start += n
        positions[s, start:] = torch.arange(length - start)  # the tail: one more segment
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def apply_active_vocab(batch: dict[str, torch.Tensor], vocab: Vocab, active_codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hide inactive image ids: masked placeholder as input, ignored as target.

    `active_codes` is the (num_image,) bool mask from the schedule. The third rule, excluding the
    inactive logits from the softmax, is applied to the logits by `ugen.model.masked_loss`.
    """
    ids, labels = batch["input_ids"], batch["labels"]
    inactive = ~active_codes.to(ids.device)
    ids_off = vocab.is_image(ids) & inactive[(ids - vocab.image_start).clamp(min=0)]  # (B, T)
    labels_off = vocab.is_image(labels) & inactive[(labels - vocab.image_start).clamp(min=0)]  # (B, T)
    return {
        **batch,
        "input_ids": ids.masked_fill(ids_off, vocab.img_mask),
        "labels": labels.masked_fill(labels_off, IGNORE),
    }


@dataclass
class TokenizedExample:
    """An example with its texts already tokenized (SentencePiece ids) and its image as codes."""

    codes: np.ndarray  # (grid*grid,)
    caption: list[int]
    prompts: list[list[int]]
    qa: list[tuple[list[int], list[int]]]
    passage: list[int]
    layout: list[int] | None = None  # the scene's plan (`ugen.example.Texts.layout`), if it has one


class RowSampler:
    """Draws training batches: a task per row by the mixture weights, then an example for it.

    A task the data cannot feed (no QA pairs in a bring-your-own data set: no vqa, no text_qa) gets
    weight 0. The draw depends only on the generator passed in, which the training loop seeds from
    (seed, step): the data order of a resumed run is the uninterrupted run's. With `plan`, a t2i
    row of an example with a layout writes it between its caption and its image.
    """

    def __init__(self, examples: Sequence[TokenizedExample], vocab: Vocab, mix: dict[str, float], caption_dropout: float,
                 max_len: int | None = None, plan: bool = False):
        unknown = set(mix) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks in the mixture: {sorted(unknown)} (tasks: {', '.join(TASKS)})")
        self.examples, self.vocab, self.caption_dropout, self.max_len = examples, vocab, caption_dropout, max_len
        self.plan = plan
        # The code cache (`ugen.data.cache.CodeCache`) knows its rows with QA without reading them all.
        self.with_qa = getattr(examples, "with_qa", None)
        if self.with_qa is None:
            self.with_qa = [i for i, e in enumerate(examples) if e.qa]
        weights = np.array([mix.get(t, 0.0) for t in TASKS], dtype=float)
        if not len(self.with_qa):
            weights[TASKS.index("vqa")] = weights[TASKS.index("text_qa")] = 0.0
        if weights.sum() <= 0:
            raise ValueError(f"task mixture {mix} puts no weight on a task this data supports")
        self.weights = weights / weights.sum()

    def rows(self, rng: np.random.Generator, batch_size: int, tasks: tuple[str, ...] | None = None) -> list[Row]:
        """`tasks` restricts the draw (phase 0 of the schedule trains on text only)."""
        weights = self.weights
        if tasks is not None:
            weights = np.array([w if t in tasks else 0.0 for t, w in zip(TASKS, weights)])
            weights = weights / weights.sum()
        out = []
        for task in rng.choice(TASKS, size=batch_size, p=weights):
            out.append(self.row(task, rng))
        return out

    def fill(self, rng: np.random.Generator, bins: int, length: int, tasks: tuple[str, ...] | None = None) -> list[list[Row]]:
        """Rows drawn one at a time into `bins` bins of `length` tokens, each into the first bin it
        fits (rows longer than `length` are cut), until one fits nowhere; that row is dropped.
        Stopping at the first misfit, rather than skipping it to find a shorter one, keeps the task
        mixture and row lengths as drawn, bar that one row per batch."""
        filled: list[list[Row]] = [[] for _ in range(bins)]
        free = [length] * bins
        while True:
            row = self.rows(rng, 1, tasks)[0]
            row = Row(row.ids[:length], row.loss_from, row.task)
            slot = next((b for b in range(bins) if free[b] >= len(row.ids)), None)
            if slot is None:
                return filled
            filled[slot].append(row)
            free[slot] -= len(row.ids)

    def row(self, task: str, rng: np.random.Generator) -> Row:
        vocab = self.vocab
        if task in ("vqa", "text_qa"):
            ex = self.examples[self.with_qa[rng.integers(len(self.with_qa))]]
            question, answer = ex.qa[rng.integers(len(ex.qa))]
            if task == "text_qa":  # the same question, answered from the passage about the scene
                return text_qa_row(vocab, ex.passage, question, answer)
            return vqa_row(vocab, ex.codes, question, answer)
        if task == "interleaved":
            return self.interleaved(rng)
        ex = self.examples[rng.integers(len(self.examples))]
        if task == "text":
            return text_row(vocab, ex.passage)
        if task == "caption":
            return caption_row(vocab, ex.codes, ex.caption)
        prompt = ex.prompts[rng.integers(len(ex.prompts))]
        if rng.random() < self.caption_dropout:
            return t2i_row(vocab, None, ex.codes)
        return t2i_row(vocab, prompt, ex.codes, ex.layout if self.plan else None)

    def interleaved(self, rng: np.random.Generator) -> Row:
        """Up to INTERLEAVED_SCENES random scenes, each with one of its generation prompts, as many
        as fit in `max_len` (at least one)."""
        scenes, length = [], 2  # bos, eos
        for _ in range(INTERLEAVED_SCENES):
            ex = self.examples[rng.integers(len(self.examples))]
            caption = ex.prompts[rng.integers(len(ex.prompts))]
            added = len(caption) + len(ex.codes) + 2  # boi, eoi
            if scenes and self.max_len is not None and length + added > self.max_len:
                break
            scenes.append((caption, ex.codes))
            length += added
        return interleaved_row(self.vocab, scenes)
