"""Sequence formats: markers in the right places and loss only on what the task produces."""

import numpy as np

from ugen.sequences import (
    IGNORE,
    TEXT_TASKS,
    RowSampler,
    TokenizedExample,
    caption_row,
    collate,
    t2i_row,
    text_qa_row,
    text_row,
    vqa_row,
)
from ugen.vocab import Vocab

V = Vocab(num_text=20, num_image=16)
CODES = np.arange(4)


def trained_targets(row):
    batch = collate([row], V.pad, 128)
    return [int(t) for t in batch["labels"][0] if t != IGNORE]


def test_formats_match_the_design():
    assert text_row(V, [1, 2]).ids == [V.bos, V.text_start + 1, V.text_start + 2, V.eos]
    cap = caption_row(V, CODES, [5])
    assert cap.ids == [V.bos, V.boi, *V.from_codes(CODES), V.eoi, V.caption, V.text_start + 5, V.eos]
    vqa = vqa_row(V, CODES, [3], [4])
    assert vqa.ids == [V.bos, V.boi, *V.from_codes(CODES), V.eoi, V.text_start + 3, V.answer, V.text_start + 4, V.eos]
    gen = t2i_row(V, [6], CODES)
    assert gen.ids == [V.bos, V.gen, V.text_start + 6, V.boi, *V.from_codes(CODES), V.eoi, V.eos]
    assert t2i_row(V, None, CODES).ids == [V.bos, V.gen, V.boi, *V.from_codes(CODES), V.eoi, V.eos]
    qa = text_qa_row(V, [1, 2], [3], [4])
    assert qa.ids == [V.bos, V.text_start + 1, V.text_start + 2, V.text_start + 3, V.answer, V.text_start + 4, V.eos]


def test_loss_covers_only_the_task_output():
    assert trained_targets(caption_row(V, CODES, [5])) == [V.text_start + 5, V.eos]
    assert trained_targets(vqa_row(V, CODES, [3], [4])) == [V.text_start + 4, V.eos]
    assert trained_targets(t2i_row(V, [6], CODES)) == [*V.from_codes(CODES), V.eoi, V.eos]
    assert trained_targets(text_row(V, [1, 2])) == [V.text_start + 1, V.text_start + 2, V.eos]
    assert trained_targets(text_qa_row(V, [1, 2], [3], [4])) == [V.text_start + 4, V.eos]


def test_collate_pads_right_and_masks_padding():
    batch = collate([text_row(V, [1]), text_row(V, [1, 2, 3])], V.pad, 128)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    assert batch["labels"][0].tolist()[2:] == [IGNORE] * 3


def test_sampler_is_a_function_of_the_generator_and_honours_the_mixture():
    examples = [TokenizedExample(CODES, [1], [[2], [3]], [([4], [5])], [6, 7]) for _ in range(10)]
    sampler = RowSampler(examples, V, {"text": 1, "text_qa": 1, "caption": 1, "vqa": 1, "t2i": 1}, caption_dropout=0.5)
    a = sampler.rows(np.random.default_rng([0, 5]), 64)
    b = sampler.rows(np.random.default_rng([0, 5]), 64)
    assert [r.ids for r in a] == [r.ids for r in b]
    assert {r.task for r in a} == {"text", "text_qa", "caption", "vqa", "t2i"}
    assert {r.task for r in sampler.rows(np.random.default_rng(1), 32, tasks=TEXT_TASKS)} == {"text", "text_qa"}
    text_qa = next(r for r in a if r.task == "text_qa")  # the passage, then the example's question
    assert text_qa.ids == [V.bos, *V.from_text([6, 7, 4]), V.answer, *V.from_text([5]), V.eos]
    dropped = [r for r in a if r.task == "t2i" and r.ids[2] == V.boi]
    assert dropped, "caption dropout 0.5 drops some t2i captions"
    no_qa = [TokenizedExample(CODES, [1], [[2]], [], [6]) for _ in range(4)]
    only = RowSampler(no_qa, V, {"vqa": 1, "text_qa": 1, "caption": 1}, 0.0)
    assert {r.task for r in only.rows(np.random.default_rng(0), 16)} == {"caption"}
