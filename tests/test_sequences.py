"""Sequence formats: markers in the right places and loss only on what the task produces."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ugen.model import build_model
from ugen.training import Distributed, forward_backward
from ugen.sequences import (
    INTERLEAVED_SCENES,
    interleaved_row,
    IGNORE,
    TEXT_TASKS,
    RowSampler,
    TokenizedExample,
    apply_active_vocab,
    caption_row,
    collate,
    pack,
    plan_prompt,
    t2i_prompt,
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


def test_a_planned_t2i_row_writes_its_layout_then_draws():
    """bos <gen> caption <plan> layout <boi> codes <eoi> <eos>: the loss covers the layout, the <boi>
    that ends it and the image; the prompt a sampler continues with the plan ends at <plan>."""
    row = t2i_row(V, [6], CODES, plan=[7, 8])
    assert row.ids == [V.bos, V.gen, V.text_start + 6, V.plan, V.text_start + 7, V.text_start + 8, V.boi,
                       *V.from_codes(CODES), V.eoi, V.eos]
    assert trained_targets(row) == [V.text_start + 7, V.text_start + 8, V.boi, *V.from_codes(CODES), V.eoi, V.eos]
    assert plan_prompt(V, [6]) == [V.bos, V.gen, V.text_start + 6, V.plan]
    assert t2i_prompt(V, [6], [7, 8]) == row.ids[:7]


def test_the_sampler_plans_only_when_asked_and_a_dropped_caption_drops_the_plan():
    examples = [TokenizedExample(CODES, [1], [[2]], [], [6], layout=[9, 9]) for _ in range(50)]
    def t2i_rows(plan, dropout):
        sampler = RowSampler(examples, V, {"t2i": 1.0}, dropout, plan=plan)
        return [sampler.row("t2i", np.random.default_rng(i)) for i in range(50)]

    assert all(V.plan in r.ids for r in t2i_rows(True, 0.0))
    assert not any(V.plan in r.ids for r in t2i_rows(False, 0.0))
    dropped = [r for r in t2i_rows(True, 0.5) if V.text_start + 2 not in r.ids]
    assert dropped and all(r.ids[:3] == [V.bos, V.gen, V.boi] for r in dropped)  # the unconditional row, no plan
    # rows without a layout stay plain t2i rows
    plain = RowSampler([TokenizedExample(CODES, [1], [[2]], [], [6])], V, {"t2i": 1.0}, 0.0, plan=True)
    assert V.plan not in plain.row("t2i", np.random.default_rng(0)).ids


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


def test_interleaved_rows_alternate_captions_and_images_within_the_length():
    row = interleaved_row(V, [([1, 2], CODES), ([3], CODES[::-1])])
    assert row.ids == [V.bos, V.text_start + 1, V.text_start + 2, V.boi, *V.from_codes(CODES), V.eoi,
                       V.text_start + 3, V.boi, *V.from_codes(CODES[::-1]), V.eoi, V.eos]
    assert row.loss_from == 0 and row.task == "interleaved"  # text and images alike are trained on
    examples = [TokenizedExample(CODES, [1], [[2] * (1 + i % 3)], [], [6]) for i in range(10)]
    unbounded = RowSampler(examples, V, {"interleaved": 1}, 0.0)
    rows = unbounded.rows(np.random.default_rng(0), 8)
    assert all(r.ids.count(V.boi) == INTERLEAVED_SCENES for r in rows)
    # each scene takes its caption (1 to 3 pieces) + 4 codes + boi and eoi: 7 to 9 tokens, so 20
    # tokens hold two scenes (bos, eos, at most 18) but not three (at least 2 + 21)
    bounded = RowSampler(examples, V, {"interleaved": 1}, 0.0, max_len=20)
    rows = bounded.rows(np.random.default_rng(0), 32)
    assert all(len(r.ids) <= 20 and r.ids.count(V.boi) == 2 for r in rows)
    lone = RowSampler(examples, V, {"interleaved": 1}, 0.0, max_len=5)  # at least one scene, however long
    assert all(r.ids.count(V.boi) == 1 for r in lone.rows(np.random.default_rng(0), 4))


def test_pack_lays_rows_end_to_end_with_positions_restarting():
    a, b, c = text_row(V, [1]), caption_row(V, CODES, [5]), text_row(V, [2, 3])  # 3, 10 and 4 tokens
    batch = pack([[a, b], [c]], 14, V.pad)
    assert batch["input_ids"][0].tolist() == [*a.ids, *b.ids, V.pad]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, *range(10), 0]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, *range(10)]
    # targets: row a's two, row b's caption and <eos>; none across the boundary or in the tail
    assert batch["labels"][0].tolist() == [V.text_start + 1, V.eos, *[IGNORE] * 8, V.text_start + 5, V.eos, IGNORE, IGNORE]
    assert batch["labels"][1].tolist()[:4] == [V.text_start + 2, V.text_start + 3, V.eos, IGNORE]
    with pytest.raises(ValueError, match="13 tokens, more than 8"):
        pack([[a, b]], 8, V.pad)


def test_packed_rows_give_the_same_loss_per_row_as_each_row_alone():
    """Attention must not cross rows and positions must restart: each row's summed loss inside a
    packed batch equals that row run on its own, unpadded."""
    torch.manual_seed(0)
    model = build_model("tiny", V, 64, torch.device("cpu")).eval()
    rows = [text_row(V, [1, 2, 3]), caption_row(V, CODES, [5, 6]), t2i_row(V, [6], CODES),
            vqa_row(V, CODES, [3], [4]), text_qa_row(V, [1, 2], [3], [4, 5])]
    bins = [rows[:2], rows[2:]]
    packed = pack(bins, 32, V.pad)
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    per_token = F.cross_entropy(logits.flatten(0, 1), packed["labels"].flatten(), ignore_index=IGNORE,
                                reduction="none").view(packed["labels"].shape)  # (S, L)
    for s, rows_in_bin in enumerate(bins):
        start = 0
        for row in rows_in_bin:
            alone = collate([row], V.pad, 64)
            with torch.no_grad():
                single = model(input_ids=alone["input_ids"], use_cache=False).logits
            expected = F.cross_entropy(single[0], alone["labels"][0], ignore_index=IGNORE, reduction="sum")
            got = per_token[s, start : start + len(row.ids)].sum()
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (row.task, got, expected)
            start += len(row.ids)
    assert int((packed["labels"] != IGNORE).sum()) == sum(len(trained_targets(r)) for r in rows)


def test_fill_packs_rows_first_fit_until_one_fits_nowhere():
    examples = [TokenizedExample(CODES, [1] * (i % 7), [[2]], [], [6] * (3 + i % 11)) for i in range(20)]
    sampler = RowSampler(examples, V, {"text": 1, "caption": 1, "t2i": 1}, caption_dropout=0.0)
    bins = sampler.fill(np.random.default_rng(3), 4, 24)
    assert all(sum(len(r.ids) for r in b) <= 24 for b in bins)
    # the same draw, row by row: every drawn row is packed in order until the first that fits nowhere
    rng, drawn = np.random.default_rng(3), []
    while True:
        drawn.append(sampler.rows(rng, 1)[0])
        if len(drawn) > sum(map(len, bins)):
            break
    packed = [r.ids for b in bins for r in b]
    assert sorted(packed) == sorted(r.ids for r in drawn[:-1])
    free = [24 - sum(len(r.ids) for r in b) for b in bins]
    assert len(drawn[-1].ids) > max(free), "the dropped row fit somewhere"
    assert sum(free) < 24, "bins are mostly full"


def test_the_output_layer_on_targets_only_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = build_model("tiny", V, 64, torch.device("cpu"))
    rows = [text_row(V, [1, 2, 3]), caption_row(V, CODES, [5, 6]), t2i_row(V, [6], CODES), vqa_row(V, CODES, [3], [4])]
    active = torch.tensor([True, False] * (V.num_image // 2))  # half the image ids off, as early in the schedule
    batch = pack([rows[:2], rows[2:]], 32, V.pad)
    batch = {**apply_active_vocab(batch, V, active), "active": active}
    batch["targets"] = int((batch["labels"] != IGNORE).sum())
    dist = Distributed(torch.device("cpu"))
    results = []
    for head_on_targets in (False, True):
        model.zero_grad()
        loss = forward_backward(model, model, batch, 1, V, dist, contextlib.nullcontext, head_on_targets)
        results.append((loss, [p.grad.clone() for p in model.parameters()]))
    (full, full_grads), (targets, target_grads) = results
    torch.testing.assert_close(targets, full)
    for a, b in zip(target_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
