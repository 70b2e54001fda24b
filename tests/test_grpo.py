"""GRPO: the loss on hand-computed cases, group advantages, and which tokens each stage trains."""

import math

import numpy as np
import pytest
import torch

from ugen.grpo import Guidance, group_advantages, grpo_loss, policy_logits, rollout_batch, stage_tokens, token_logprobs
from ugen.model import build_model
from ugen.sampling import Engine, SamplingParams
from ugen.sequences import caption_prompt, t2i_prompt
from ugen.vocab import Vocab

HALF = math.log(0.5)


def one_token(old_logprob: float, advantage: float, ref_logprob=None, **kwargs):
    """A single trained token drawn from two equally likely ids (policy probability 0.5)."""
    logits = torch.zeros(1, 1, 2)  # (B, T, V)
    ref = None if ref_logprob is None else torch.tensor([[ref_logprob]])
    return grpo_loss(logits, torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([advantage]),
                     torch.tensor([[old_logprob]]), ref, **kwargs)


def test_loss_at_ratio_one_is_minus_the_advantage():
    loss, stats = one_token(HALF, 1.0, kl_beta=0.0)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["clip_fraction"] == 0.0 and stats["ratio"] == pytest.approx(1.0)
    assert stats["entropy"] == pytest.approx(math.log(2))


def test_clipping_takes_the_pessimistic_side():
    # ratio = 0.5 / 0.25 = 2 with eps 0.2: a positive advantage is clipped to 1.2, a negative one is not
    loss, stats = one_token(math.log(0.25), 1.0, clip_eps=0.2, kl_beta=0.0)
    assert loss.item() == pytest.approx(-1.2) and stats["clip_fraction"] == 1.0
    loss, _ = one_token(math.log(0.25), -1.0, clip_eps=0.2, kl_beta=0.0)
    assert loss.item() == pytest.approx(2.0)


def test_k3_kl_to_the_reference():
    # policy 0.5, reference 0.25: exp(ref - logp) - (ref - logp) - 1 = 0.5 + ln 2 - 1
    kl = 0.5 + math.log(2) - 1
    loss, stats = one_token(HALF, 0.0, ref_logprob=math.log(0.25), kl_beta=0.1)
    assert stats["kl"] == pytest.approx(kl) and loss.item() == pytest.approx(0.1 * kl)
    _, same = one_token(HALF, 0.0, ref_logprob=HALF)
    assert same["kl"] == pytest.approx(0.0)


def test_token_level_average_over_the_batch():
    # Row 0 trains 1 token with advantage 1, row 1 trains 3 with advantage -1: (-1 + 3) / 4 tokens
    logits = torch.zeros(2, 3, 2)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    loss, _ = grpo_loss(logits, torch.zeros(2, 3, dtype=torch.long), mask, torch.tensor([1.0, -1.0]),
                        torch.full((2, 3), HALF), None, kl_beta=0.0)
    assert loss.item() == pytest.approx(0.5)


def test_group_advantages():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0]), group_size=2)
    assert adv.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-3)
    equal = group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.2, 0.2, 0.2]), group_size=3)
    assert equal.tolist() == [0.0] * 6 and not torch.isnan(equal).any()
    loss, stats = grpo_loss(torch.zeros(6, 2, 4), torch.zeros(6, 2, dtype=torch.long), torch.ones(6, 2), equal,
                            torch.full((6, 2), math.log(0.25)), torch.full((6, 2), math.log(0.25)))
    assert loss.item() == 0.0 and all(math.isfinite(v) for v in stats.values())
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), group_size=2)


def test_token_logprobs():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    logp, entropy = token_logprobs(logits, torch.tensor([[1]]))
    assert logp.item() == pytest.approx(math.log(0.25))
    assert entropy.item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


@pytest.mark.parametrize("stage", [1, 2])
def test_each_stage_sends_gradient_only_through_its_own_tokens(stage):
    vocab = Vocab(num_text=30, num_image=16)
    torch.manual_seed(0)
    model = build_model("tiny", vocab, 96, torch.device("cpu"))
    codes = np.arange(9) % 16
    caption = [3, 4, 5]
    if stage == 1:  # image in the prompt, caption sampled
        prompts = [caption_prompt(vocab, codes)] * 2
        completions = [[*vocab.from_text(caption), vocab.eos], [*vocab.from_text(caption[:1]), vocab.eos]]
    else:  # caption in the prompt, image sampled
        prompts = [t2i_prompt(vocab, caption)] * 2
        completions = [[*vocab.from_codes(codes), vocab.eoi], [*vocab.from_codes(codes[::-1]), vocab.eoi]]
    batch = rollout_batch(prompts, completions, stage_tokens(vocab, stage), vocab.pad)
    logits = policy_logits(model, batch)
    logits.retain_grad()
    with torch.no_grad():
        old = token_logprobs(logits, batch.targets)[0]
    loss, _ = grpo_loss(logits, batch.targets, batch.trained, torch.tensor([1.0, -1.0]), old, old - 0.1)
    loss.backward()
    has_grad = logits.grad.abs().sum(-1) > 0  # (B, L - 1): positions the loss reaches
    own = vocab.is_text(batch.targets) | (batch.targets == vocab.eos) if stage == 1 else vocab.is_image(batch.targets)
    assert torch.equal(has_grad, batch.trained)
    assert batch.trained.any() and not (batch.trained & ~own).any()
    other = vocab.is_image(batch.targets) if stage == 1 else vocab.is_text(batch.targets)
    assert not has_grad[other].any()  # stage 1: no image position; stage 2: no caption position


def test_policy_logits_score_the_tempered_policy_the_rollouts_were_drawn_from():
    vocab = Vocab(num_text=30, num_image=16)
    torch.manual_seed(0)
    model = build_model("tiny", vocab, 96, torch.device("cpu")).eval()
    batch = rollout_batch([t2i_prompt(vocab, [3, 4])], [[*vocab.from_codes(np.arange(9) % 16), vocab.eoi]], vocab.is_image, vocab.pad)
    with torch.no_grad():
        plain = policy_logits(model, batch)
        torch.testing.assert_close(policy_logits(model, batch, temperature=0.5), plain * 2)
        torch.testing.assert_close(policy_logits(model, batch, temperature=0.0), plain)  # greedy: scored at 1


def _guided_rollouts(cfg: float):
    """Two images drawn greedily with CFG by the engine, from captions of different lengths, with
    only 12 of the 16 image ids active (a model saved mid-schedule)."""
    vocab = Vocab(num_text=30, num_image=16)
    torch.manual_seed(0)
    model = build_model("tiny", vocab, 96, torch.device("cpu")).eval()
    active = torch.arange(16) < 12
    engine = Engine(model, vocab, grid=3, active_image=active)
    prompts = [t2i_prompt(vocab, [3, 4]), t2i_prompt(vocab, [5, 6, 7, 8, 9])]
    uncond = t2i_prompt(vocab, None)
    completions = engine.generate(prompts, params=SamplingParams(temperature=0.0, cfg=cfg), uncond_prompts=[uncond] * 2,
                                  max_new_tokens=10, stop_ids=(vocab.eoi,))
    guidance = Guidance.of(uncond, completions, vocab.is_image, vocab.pad, cfg, engine.allowed_image)
    return vocab, model, active, prompts, uncond, completions, guidance


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_guided_policy_is_what_the_engine_drew_from(cfg):
    vocab, model, active, prompts, uncond, completions, guidance = _guided_rollouts(cfg)
    batch = rollout_batch(prompts, completions, vocab.is_image, vocab.pad)
    with torch.no_grad():
        logits = policy_logits(model, batch, guidance=guidance)
    # The engine drew greedily from the guided, masked distribution: its tokens are that argmax.
    assert torch.equal(logits.argmax(-1)[batch.trained], batch.targets[batch.trained])
    # By hand, row by row without padding: u + cfg * (c - u) at the 9 code positions, over the
    # active image ids alone.
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        def code_logits(prefix):
            ids = torch.tensor([prefix + completion])
            with torch.no_grad():
                out = model(input_ids=ids).logits[0]
            return out[len(prefix) - 1 : len(prefix) - 1 + 9]  # (9, V): the positions predicting the codes
        c, u = code_logits(prompt), code_logits(uncond)
        guided = (u + cfg * (c - u))[:, vocab.image_start :][:, active]
        codes = torch.tensor(vocab.to_codes(completion[:9]))
        expected = guided.log_softmax(-1).gather(1, codes[:, None]).squeeze(1)
        ours = token_logprobs(logits, batch.targets)[0][row][batch.trained[row]]
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_guided_scoring_sends_gradient_through_both_prompts_and_stays_finite():
    vocab, model, _, prompts, _, completions, guidance = _guided_rollouts(3.0)
    batch = rollout_batch(prompts, completions, vocab.is_image, vocab.pad)
    logits = policy_logits(model, batch, guidance=guidance)
    logp, entropy = token_logprobs(logits, batch.targets)
    assert torch.isfinite(logp[batch.trained]).all() and torch.isfinite(entropy).all()
    loss, stats = grpo_loss(logits, batch.targets, batch.trained, torch.tensor([1.0, -1.0]), logp.detach(), logp.detach())
    assert math.isfinite(loss.item()) and stats["ratio"] == pytest.approx(1.0)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
