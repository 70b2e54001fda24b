"""The one sampling engine: every caller (CLI, eval, RL) draws tokens through `Engine.generate`.

Prefill the left-padded prompts once, then decode a token at a time with a preallocated (static)
KV cache (LlamaGen's structure); the prefill computes logits for the last position only. Modality
is enforced on the logits, so even an untrained model emits well-formed sequences: inside an
image span only image ids may be drawn and exactly grid*grid of them, then <eoi>; outside it only
text ids (less those the vocabulary never emits: a pretrained LM's own specials) and the few
specials that may follow text. Classifier-free guidance puts the
conditional and unconditional rows in one batch and mixes `u + s * (c - u)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from ugen.vocab import Vocab


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 keeps all
    top_p: float = 1.0  # 1 keeps all
    cfg: float = 1.0  # guidance scale; used when unconditional prompts are given

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top-k ids and the smallest set whose probability reaches top_p; logits (B, V)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # the id that crosses top_p is kept
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


CACHES = ("static", "dynamic", "none")  # how `Engine.generate` keeps past keys and values


class Engine:
    def __init__(self, model: torch.nn.Module, vocab: Vocab, grid: int):
        self.model, self.vocab = model, vocab
        self.image_len = grid * grid
        self.device = next(model.parameters()).device
        v = vocab
        image = torch.zeros(v.size, dtype=torch.bool)
        image[v.image_start :] = True
        text = torch.zeros(v.size, dtype=torch.bool)
        text[v.text_start : v.text_end] = True
        text[v.from_text(list(v.never_emitted))] = False  # a pretrained LM's own specials and padding rows
        text[v.eos] = True
        self.allowed_image = image.to(self.device)  # inside an image span
        self.allowed_text = text.to(self.device)  # outside: text pieces and <eos>
        self.allowed_text_or_image = text.clone().index_fill_(0, torch.tensor([v.boi]), True).to(self.device)
        self.allowed_eoi = (torch.arange(v.size) == v.eoi).to(self.device)  # an image span is full

    def _image_state(self, prompt: list[int]) -> tuple[bool, int]:
        """Whether a prompt ends inside an image span, and how many codes that span already has."""
        v = self.vocab
        if v.boi not in prompt:
            return False, 0
        last_boi = len(prompt) - 1 - prompt[::-1].index(v.boi)
        tail = prompt[last_boi + 1 :]
        if v.eoi in tail:
            return False, 0
        return True, sum(t >= v.image_start for t in tail)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        params: SamplingParams = SamplingParams(),
        uncond_prompts: list[list[int]] | None = None,
        stop_ids: tuple[int, ...] | None = None,
        allow_images: bool = False,
        generator: torch.Generator | None = None,
        cache: str = "static",
    ) -> list[list[int]]:
        """Continue each prompt; returns the new ids of each row, up to and including its stop id.

        `uncond_prompts` (one per prompt) turns on CFG with scale `params.cfg`. `stop_ids` default
        to <eos>; image generation stops at <eoi>. `allow_images` lets text be followed by <boi>.
        """
        v, n = self.vocab, len(prompts)
        stop_ids = stop_ids or (v.eos,)
        guided = uncond_prompts is not None and params.cfg != 1.0
        if uncond_prompts is not None and len(uncond_prompts) != n:
            raise ValueError("one unconditional prompt per prompt")
        rows = prompts + (uncond_prompts if guided else [])
        length = max(len(p) for p in rows)
        ids = torch.full((len(rows), length), v.pad, dtype=torch.long)  # (R, L) left-padded
        mask = torch.zeros((len(rows), length), dtype=torch.long)  # (R, L)
        for r, p in enumerate(rows):
            ids[r, length - len(p) :] = torch.tensor(p)
            mask[r, length - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (R, L): each row counts from its first token
        # The mask and the output grow by a column a step: allocated once, read through slices.
        mask = torch.cat([mask, torch.ones((len(rows), max_new_tokens), dtype=torch.long, device=self.device)], dim=1)
        out = torch.full((n, max_new_tokens), v.pad, dtype=torch.long, device=self.device)

        state = [self._image_state(p) for p in prompts]
        in_image = torch.tensor([s[0] for s in state], device=self.device)  # (B,)
        n_codes = torch.tensor([s[1] for s in state], device=self.device)  # (B,)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        stops = torch.tensor(stop_ids, device=self.device)
        text_allowed = self.allowed_text_or_image if allow_images else self.allowed_text
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, not {cache!r}")
        # static: every layer's keys and values go into buffers sized once for the whole call, so a
        # step writes one slot instead of concatenating (and a compiled step keeps its shapes);
        # dynamic: transformers' growing cache; none: recompute everything, the reference.
        kv = {"static": lambda: StaticCache(config=self.model.config, max_cache_len=length + max_new_tokens),
              "dynamic": DynamicCache, "none": lambda: None}[cache]()
        step_ids, step_pos = ids, positions
        slots = torch.arange(length, device=self.device)  # the cache slots this step writes
        steps = 0
        for step in range(max_new_tokens):
            if cache == "static":  # the mask covers every slot; causality hides the ones not yet written
                step_mask, slot_kwargs = mask, {"cache_position": slots}
            else:
                step_mask, slot_kwargs = mask[:, : length + step], {}
            logits = self.model(
                input_ids=step_ids, attention_mask=step_mask, position_ids=step_pos, past_key_values=kv,
                use_cache=kv is not None, logits_to_keep=1, **slot_kwargs,  # logits of the next token only
            ).logits[:, -1].float()  # (R, V)
            if guided:
                cond, uncond = logits[:n], logits[n:]
                logits = uncond + params.cfg * (cond - uncond)  # (B, V)
            allowed = torch.where(in_image[:, None], self.allowed_image, text_allowed)  # (B, V)
            allowed = torch.where((in_image & (n_codes >= self.image_len))[:, None], self.allowed_eoi, allowed)
            logits = logits.masked_fill(~allowed, float("-inf"))
            token = self._draw(logits, params, generator)  # (B,)
            token = torch.where(done, torch.full_like(token, v.pad), token)
            out[:, step] = token
            steps = step + 1

            is_code = in_image & (token >= v.image_start)
            n_codes = torch.where(token == v.boi, 0, n_codes + is_code.long())
            in_image = (in_image | (token == v.boi)) & (token != v.eoi)
            done = done | torch.isin(token, stops)
            if bool(done.all()):
                break

            new = torch.cat([token, token[: len(rows) - n]])[:, None]  # (R, 1): uncond rows follow cond
            slots = slots[-1:] + 1
            if kv is not None:
                step_ids, step_pos = new, step_pos[:, -1:] + 1
            else:  # recompute everything: the reference the cached path is tested against
                step_ids = torch.cat([step_ids, new], dim=1)
                step_pos = torch.cat([step_pos, step_pos[:, -1:] + 1], dim=1)

        results = []
        for row in out[:, :steps].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
            results.append(row[:cut])
        return results

    @staticmethod
    def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
        if params.temperature == 0:
            return logits.argmax(-1)
        logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
        probs = logits.softmax(-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
