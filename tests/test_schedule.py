"""The progressive-vocabulary schedule: phases, growth, order, exact resumption, and no weight decay
on the rows of ids not switched on yet."""

import numpy as np
import pytest
import torch

from ugen.model import build_model, masked_loss
from ugen.schedule import VocabSchedule, build_schedule
from ugen.sequences import IGNORE, apply_active_vocab, collate, t2i_row
from ugen.training import make_optimizer
from ugen.vocab import Vocab


def test_phases_and_growth_follow_m_and_k():
    s = build_schedule("progressive", 100, 1000, text_only_steps=50, ids_per_add=3, add_every=7, seed=1)
    assert [s.num_active(t) for t in (0, 49)] == [0, 0]  # phase 0: text only, nothing active
    assert s.phase(49) == 0 and s.phase(50) == 1
    assert s.num_active(50) == 3 and s.num_active(56) == 3 and s.num_active(57) == 6
    assert s.num_active(s.full_step()) == 100 and s.num_active(s.full_step() - 1) < 100
    counts = [s.num_active(t) for t in range(1000)]
    assert counts == sorted(counts)  # ids only ever switch on


def test_derived_m_k_reach_all_ids_by_the_chosen_fraction():
    for total, full_at in [(2000, 0.3), (200_000, 0.5), (50, 1.0)]:
        s = build_schedule("progressive", 1000, total, text_only_steps=10, full_at=full_at)
        assert s.full_step() <= int(full_at * total)
    paper = build_schedule("progressive", 1000, 200_000, full_at=0.5)
    assert paper.ids_per_add == 1  # the paper's one id every k steps when the span allows it


def test_random_order_is_seeded_and_frequency_order_puts_common_codes_first():
    a = build_schedule("progressive", 50, 100, seed=3)
    assert a.order == build_schedule("progressive", 50, 100, seed=3).order
    assert a.order != build_schedule("progressive", 50, 100, seed=4).order
    assert sorted(a.order) == list(range(50))
    counts = np.zeros(50)
    counts[[7, 3, 9]] = [100, 50, 10]
    f = build_schedule("progressive", 50, 100, order="frequency", code_counts=counts)
    assert f.order[:3] == (7, 3, 9)


def test_vanilla_is_all_active_from_step_zero():
    s = build_schedule("vanilla", 64, 100, text_only_steps=10)
    assert s.num_active(0) == 64 and bool(s.active_codes(0).all())


def test_round_trip_through_json_resumes_the_same_active_sets():
    s = build_schedule("progressive", 300, 500, text_only_steps=20, full_at=0.6, seed=5)
    t = VocabSchedule.from_dict(s.to_dict())
    for step in (0, 20, 21, 100, 299, 499):
        assert torch.equal(s.active_codes(step), t.active_codes(step))


def test_inactive_ids_are_masked_as_inputs_ignored_as_targets_and_out_of_the_softmax():
    vocab = Vocab(num_text=10, num_image=8)
    codes = [0, 1, 2, 3]
    batch = collate([t2i_row(vocab, [1, 2], codes)], vocab.pad, 64)
    active = torch.tensor([True, False, True, False, True, True, True, True])
    masked = apply_active_vocab(batch, vocab, active)
    ids, labels = masked["input_ids"][0], masked["labels"][0]
    image_positions = (batch["input_ids"][0] >= vocab.image_start).nonzero().flatten()
    assert ids[image_positions].tolist() == [vocab.image_start + 0, vocab.img_mask, vocab.image_start + 2, vocab.img_mask]
    target_codes = [int(l) - vocab.image_start for l in labels if l >= vocab.image_start]
    assert target_codes == [0, 2] and (labels == IGNORE).sum() > (batch["labels"][0] == IGNORE).sum()

    # An inactive id gets zero probability: the loss equals CE over the active columns only.
    logits = torch.randn(1, ids.numel(), vocab.size)
    loss = masked_loss(logits, masked["labels"], vocab, active)
    keep = torch.cat([torch.ones(vocab.image_start, dtype=torch.bool), active])
    valid = masked["labels"][0] != IGNORE
    sub = logits[0][valid][:, keep]
    remap = torch.cumsum(keep.long(), 0) - 1
    expected = torch.nn.functional.cross_entropy(sub, remap[masked["labels"][0][valid]])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_weight_decay_leaves_the_rows_of_inactive_image_ids_alone(tied):
    """Rows of ids not switched on yet get no gradient: AdamW must not shrink them (their decay
    would pull them to zero before they are ever trained), while a hidden matrix with no gradient
    decays by exactly (1 - lr * wd)."""
    vocab = Vocab(num_text=10, num_image=8)
    torch.manual_seed(0)
    model = build_model("tiny", vocab, 32, torch.device("cpu"))
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    lr, wd = 0.1, 0.5
    optimizer = make_optimizer(model, lr, wd)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trained = torch.arange(vocab.image_start)  # specials and text ids; every image id is inactive
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for layer in (model.model.embed_tokens, model.lm_head):
        layer.weight.grad[trained] = torch.randn(len(trained), layer.weight.shape[1])
    optimizer.step()

    after = dict(model.named_parameters())
    for name in {"model.embed_tokens.weight", "lm_head.weight"} & set(after):
        assert torch.equal(after[name][vocab.image_start :], before[name][vocab.image_start :]), name
        assert not torch.equal(after[name][trained], before[name][trained])  # the rows with gradients did move
    q = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(after[q], before[q] * (1 - lr * wd), rtol=1e-6, atol=0)
    assert not torch.equal(after[q], before[q])
