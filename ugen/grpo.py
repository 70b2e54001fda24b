"""GRPO, the loss of Unified-GRPO (`train/rl.py`): group advantages, the clipped objective, and
the batches its rollouts are scored in.

A rollout is a prompt (token ids) and a completion the policy sampled after it. Only the
completion's tokens are trained, and of those only the ones `trained` marks: stage 1 trains the
caption (text pieces and <eos>), stage 2 the image codes, so neither stage moves the other
modality's outputs through its loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ugen.sequences import IGNORE, Row, collate


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(N,) rewards in consecutive groups of `group_size` -> (N,) advantages normalized within each
    group: (r - mean) / (std + eps). A group whose rewards are all equal gets advantage 0 (nothing
    to learn from it), never NaN."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)  # (N / G, G)
    std = groups.std(dim=1, keepdim=True, unbiased=False) if group_size > 1 else torch.zeros_like(groups[:, :1])
    return ((groups - groups.mean(dim=1, keepdim=True)) / (std + eps)).view(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token and the entropy of each distribution.

    logits (B, T, V), tokens (B, T): `logits[:, t]` is the distribution `tokens[:, t]` was drawn
    from. Returns two (B, T) tensors.
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    chosen = logp.gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)  # (B, T)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, T)
    return chosen, entropy


def grpo_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_beta: float = 0.04,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of a batch of rollouts and its diagnostics.

    logits (B, T, V) of the policy being updated at the positions that predict `tokens` (B, T);
    mask (B, T) marks the trained tokens; advantages (B,), one per rollout; old_logprobs (B, T)
    of the policy that sampled the rollouts; ref_logprobs (B, T) of the frozen reference, or None
    for no KL term. Per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * KL,
    with ratio = exp(logp - old_logp) and KL the k3 estimator exp(ref - logp) - (ref - logp) - 1
    (unbiased, always >= 0).

    Where this departs from textbook GRPO (DeepSeekMath):
    - Token-level averaging: the per-token terms are averaged over every trained token of the
      batch, not per sequence and then over sequences, so a long caption is not down-weighted
      per token (as in DAPO). Stage 2's image rollouts all have the same length, so there the two
      agree.
    - `logits` are the policy the rollouts were drawn from (`policy_logits`: tempered; for images
      guided and masked as the engine draws them), except for caption top-p, which the ratio
      ignores. `old_logprobs` are recomputed the same way before the first pass, so the first
      pass starts at ratio 1 exactly.

    Returns (loss, {"kl", "clip_fraction", "entropy", "ratio"}), means over the trained tokens.
    """
    mask = mask.float()
    n = mask.sum().clamp(min=1.0)
    logprobs, entropy = token_logprobs(logits, tokens)
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    adv = advantages.float()[:, None]  # (B, 1)
    objective = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)  # (B, T)
    per_token = -objective
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        log_ref_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        per_token = per_token + kl_beta * kl
    loss = (per_token * mask).sum() / n
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps).float()
        stats = {
            "kl": float((kl * mask).sum() / n),
            "clip_fraction": float((clipped * mask).sum() / n),
            "entropy": float((entropy * mask).sum() / n),
            "ratio": float((ratio * mask).sum() / n),
        }
    return loss, stats


@dataclass
class RolloutBatch:
    """Rollouts right-padded into one batch: the model reads `input_ids`; `targets[:, t]` is the
    token at t + 1 and `trained[:, t]` whether the loss covers it."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L - 1)
    trained: torch.Tensor  # (B, L - 1) bool

    def to(self, device) -> "RolloutBatch":
        return RolloutBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.targets, self.trained)))


def rollout_batch(prompts: list[list[int]], completions: list[list[int]], trainable, pad_id: int) -> RolloutBatch:
    """Batch `prompts[i] + completions[i]` (right-padded by `collate`, the completion as the row's
    output); a completion token is trained when `trainable(ids)` (a bool mask of an id tensor)
    says so. Prompt tokens and padding never are."""
    rows = [Row(p + c, len(p) - 1, "rollout") for p, c in zip(prompts, completions)]
    batch = collate(rows, pad_id, max_len=max(len(r.ids) for r in rows))
    targets = batch["input_ids"][:, 1:]
    trained = (batch["labels"][:, :-1] != IGNORE) & trainable(targets)  # labels[:, t] is the target at t + 1
    return RolloutBatch(batch["input_ids"], batch["attention_mask"], targets, trained)


def stage_tokens(vocab, stage: int):
    """What a stage trains, as a `trainable` for `rollout_batch`: stage 1 the caption (text pieces
    and <eos>), stage 2 the image codes (not the <eoi> that must follow them)."""
    if stage == 1:
        return lambda ids: vocab.is_text(ids) | (ids == vocab.eos)
    if stage == 2:
        return vocab.is_image
    raise ValueError(f"stage must be 1 or 2, not {stage}")


@dataclass
class Guidance:
    """The image distribution stage 2 samples from, for scoring: classifier-free guidance (the same
    completions after the unconditional prompt, mixed `u + scale * (c - u)` with the conditional
    logits; none at scale 1) and the engine's modality mask (only the image ids it may draw at a
    code, `allowed`), as `Engine` does before its draw."""

    uncond: RolloutBatch | None  # the completions after the unconditional prompt; None at scale 1
    scale: float
    allowed: torch.Tensor  # (V,) bool: the image ids the engine may draw

    @classmethod
    def of(cls, uncond_prompt: list[int], completions: list[list[int]], trainable, pad_id: int, scale: float,
           allowed: torch.Tensor) -> "Guidance":
        uncond = None if scale == 1.0 else rollout_batch([uncond_prompt] * len(completions), completions, trainable, pad_id)
        return cls(uncond, scale, allowed)

    def to(self, device) -> "Guidance":
        return Guidance(None if self.uncond is None else self.uncond.to(device), self.scale, self.allowed.to(device))


# A masked id's logit: far below any real one, yet finite, so that log-softmax and the entropy of
# the masked distribution stay free of NaN (exp(-inf) * -inf is NaN; exp(-1e9) * -1e9 is 0).
MASKED_LOGIT = -1e9


def _forward(model, batch: RolloutBatch) -> torch.Tensor:
    device = batch.input_ids.device
    # bf16 autocast on CUDA over fp32 weights (as pretraining); no KV cache is built for a training forward
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits[:, :-1]
    return logits.float()


def policy_logits(model, batch: RolloutBatch, temperature: float = 1.0, guidance: Guidance | None = None) -> torch.Tensor:
    """(B, L - 1, V) logits predicting `batch.targets`, divided by the sampling temperature: the
    policy GRPO scores is the distribution the rollouts were drawn from (greedy, 0, is scored at 1).
    With `guidance`, the trained positions hold the guided, masked logits the engine drew from;
    every trained row then has as many trained tokens (an image's codes), in both batches."""
    logits = _forward(model, batch)
    if guidance is not None:
        n = int(batch.trained[0].sum())
        if not (batch.trained.sum(1) == n).all():
            raise ValueError("guided scoring needs the same number of trained tokens in every row")
        vocab = logits.shape[-1]

        def trained_positions(trained: torch.Tensor) -> torch.Tensor:  # (B, n, V) indices along the sequence
            return trained.float().argsort(dim=1, descending=True, stable=True)[:, :n, None].expand(-1, -1, vocab)

        at = trained_positions(batch.trained)
        mixed = logits.gather(1, at)  # (B, n, V)
        if guidance.uncond is not None:
            uncond = _forward(model, guidance.uncond).gather(1, trained_positions(guidance.uncond.trained))
            mixed = uncond + guidance.scale * (mixed - uncond)
        allowed = F.pad(guidance.allowed, (0, vocab - guidance.allowed.numel()))  # rows past the vocab: never drawn
        logits = logits.scatter(1, at, mixed.masked_fill(~allowed, MASKED_LOGIT))
    return logits / temperature if temperature > 0 else logits
