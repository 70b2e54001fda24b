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
    - `logits` are the tempered policy (`policy_logits(..., temperature)`), but rollouts may also be
      drawn with top-p and (images) CFG, which the ratio ignores: it is that of the conditional
      policy, not of the exact sampling distribution. `old_logprobs` are recomputed the same way
      before the first pass, so the first pass starts at ratio 1 exactly.

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


def policy_logits(model, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """(B, L - 1, V) logits predicting `batch.targets`, divided by the sampling temperature: the
    policy GRPO scores is the tempered distribution the rollouts were drawn from (greedy, 0, is
    scored at 1)."""
    device = batch.input_ids.device
    # bf16 autocast on CUDA over fp32 weights (as pretraining); no KV cache is built for a training forward
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits[:, :-1]
    logits = logits.float()
    return logits / temperature if temperature > 0 else logits
