"""The one sampling engine: every caller (CLI, eval, RL) draws tokens through `Engine.generate`.

Prefill the left-padded prompts once, then decode a token at a time with a preallocated (static)
KV cache (LlamaGen's structure); the prefill computes logits for the last position only. Modality
is enforced on the logits, so even an untrained model emits well-formed sequences: inside an
image span only image ids may be drawn (only the active ones: a model saved before its progressive
vocabulary schedule switched every id on never trained the others) and exactly grid*grid of them,
then <eoi>; outside it only text ids (less those the vocabulary never emits: a pretrained LM's own
specials) and the few specials that may follow text. Classifier-free guidance puts the
conditional and unconditional rows in one batch and mixes `u + s * (c - u)`.

A decode step costs little beyond the model's matrix products: under SDPA it passes a ready 4D
mask (transformers would build one from the 2D padding mask every step), a batch of image rows
runs a known number of steps without asking the device whether all are done, the token is drawn
inside the step (the noise `torch.multinomial` would draw, from the caller's generator), and the
whole step, forward to token, can be compiled (`Engine(compile=...)`: CUDA graphs on CUDA).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache, StaticCache

from ugen.errors import UserError
from ugen.vocab import Vocab


class Abandoned(Exception):
    """An engine call stopped before its end because `Engine.should_stop` said nobody waits for it."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 keeps all
    top_p: float = 1.0  # 1 keeps all
    cfg: float = 1.0  # guidance scale; used when unconditional prompts are given
    # A drawing's plan (a model pretrained with --plan writes the layout before the image): its
    # temperature, no top-k/top-p, no guidance (`UGen.draw_plans`).
    plan_temperature: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.plan_temperature < 0:
            raise ValueError(f"temperatures must be >= 0, got {self.temperature} and {self.plan_temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor | int, top_p: torch.Tensor | float) -> torch.Tensor:
    """Keep the top-k ids (0: all; ties with the k-th kept) and, of those, the smallest set whose
    probability reaches top_p (1: all); logits (B, V). In the engine top_k and top_p are 0-d
    tensors, so that a compiled step takes any value without compiling again (an int in the graph
    is a constant: every value a client sends would be a new variant); one sort serves both."""
    top_k, top_p = torch.as_tensor(top_k, device=logits.device), torch.as_tensor(top_p, device=logits.device)
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
    k = torch.where(top_k > 0, top_k.clamp(max=logits.size(-1)), logits.size(-1))
    kth = sorted_logits.gather(-1, (k - 1).expand(logits.size(0), 1))  # (B, 1)
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs = sorted_logits.softmax(-1)
    drop = (probs.cumsum(-1) - probs >= top_p) & (top_p < 1.0)  # the id that crosses top_p is kept
    drop |= sorted_logits == float("-inf")
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


CACHES = ("static", "dynamic", "none")  # how `Engine.generate` keeps past keys and values


def _noise_blocks(generator: torch.Generator | Sequence[torch.Generator] | None,
                  n: int) -> list[tuple[int, int, torch.Generator | None]]:
    """(start, stop, generator) for each run of consecutive prompts that share a generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return [(0, n, generator)]
    generators = list(generator)
    if len(generators) != n:
        raise ValueError(f"one generator per prompt: {len(generators)} for {n} prompts")
    blocks = []
    for row, rows_generator in enumerate(generators):
        if blocks and blocks[-1][2] is rows_generator:
            blocks[-1] = (blocks[-1][0], row + 1, rows_generator)
        else:
            blocks.append((row, row + 1, rows_generator))
    return blocks


def needs_autocast(device: torch.device, weights: torch.dtype) -> bool:
    """Whether the engine runs a model under bf16 autocast: fp32 weights on CUDA (a model loaded for
    inference is bf16 there already; on the CPU fp32 is what inference runs in)."""
    return device.type == "cuda" and weights == torch.float32


def _full_attention_only(config) -> bool:
    """Whether every layer attends to all past keys (no sliding window, no chunks): what one
    4D mask for all layers says."""
    return (all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or [])
            and getattr(config, "sliding_window", None) is None
            and getattr(config, "attention_chunk_size", None) is None)


def _bucket(n: int) -> int:
    """The power of two at or above n. A compiled decode step is specialised to its shapes, so the
    compiled path rounds rows and cache length up to these few sizes and compiles each once."""
    return 1 << (n - 1).bit_length()


class Engine:
    """Draws tokens from `model` under ugen's modality rules (see the module docstring).

    `compile` runs the decode step through `torch.compile` with static shapes (prefill stays eager:
    one call, many shapes); on CUDA in mode "reduce-overhead", where CUDA graphs replay a step's
    hundreds of small kernels as one launch. None means on CUDA (with SDPA attention) only: on
    2 CPU threads (benchmarks/sampler.py, the default model, 16 images with CFG) the compiled step
    draws the same tokens about 1.45x faster than the eager one (0.22 s against 0.31 s), but each
    new (rows, cache length) bucket takes some 5-20 s to compile, which tests and one-off CLI
    calls should not pay.

    `active_image` (bool, (num_image,)) names the image codes that may be drawn; None allows all.
    """

    def __init__(self, model: torch.nn.Module, vocab: Vocab, grid: int, compile: bool | None = None,
                 active_image: torch.Tensor | None = None, autocast: bool | None = None):
        self.model, self.vocab = model, vocab
        # Asked before each step when set: true stops the call with `Abandoned` (`ugen serve` sets it
        # to "every client of this batch has gone", so a batch nobody waits for costs a step, not a call).
        self.should_stop: Callable[[], bool] | None = None
        # transformers renamed the forward's `past_key_values` to `cache` (the old name warns on
        # every call and is removed in 5.40); older releases only know the old one
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.image_len = grid * grid  # codes of an image
        # With row ends (the vocabulary's row_length), each row of codes is followed by <eol>.
        self.row_ends = vocab.row_length > 0
        self.row_length, self.rows = vocab.row_length, self.image_len // max(vocab.row_length, 1)
        self.device = next(model.parameters()).device
        # bf16 autocast over fp32 weights (a model in training: RL's policy), as its training
        # forwards run: flash-attn refuses fp32, so without it RL crashed at its first rollout on CUDA.
        self.autocast = needs_autocast(self.device, next(model.parameters()).dtype) if autocast is None else autocast
        v = vocab
        if active_image is not None and tuple(active_image.shape) != (v.num_image,):
            raise ValueError(f"active_image must be a bool mask of shape ({v.num_image},), not {tuple(active_image.shape)}")
        image = torch.zeros(v.size, dtype=torch.bool)
        image[v.image_start :] = True if active_image is None else active_image.bool().cpu()
        self.draws_images = bool(image.any())  # a model saved in its text-only phase has no image id to draw
        text = torch.zeros(v.size, dtype=torch.bool)
        text[v.text_start : v.text_end] = True
        text[v.from_text(list(v.never_emitted))] = False  # a pretrained LM's own specials and padding rows
        text[v.eos] = True
        self.allowed_image = image.to(self.device)  # inside an image span
        self.allowed_text = text.to(self.device)  # outside: text pieces and <eos>
        # Text may open an image only when there are image ids to fill it with.
        self.allowed_text_or_image = text.clone().index_fill_(0, torch.tensor([v.boi]), self.draws_images).to(self.device)
        self.allowed_eoi = (torch.arange(v.size) == v.eoi).to(self.device)  # an image span is full
        self.eol = v.special("<eol>") if self.row_ends else -1
        self.allowed_eol = (torch.arange(v.size) == self.eol).to(self.device)  # a row of codes is full
        # SDPA takes a ready 4D boolean mask as is, which spares transformers building one from the
        # 2D padding mask each step (~0.15 ms a step on the CPU); flash-attn unpads by the 2D mask,
        # eager attention wants an additive one and sliding-window layers their own, so they get
        # the 2D mask.
        attention = model.config._attn_implementation
        self.mask_4d = attention == "sdpa" and _full_attention_only(model.config)
        if compile and not self.mask_4d:
            raise ValueError(f"a compiled decode step needs SDPA attention in full-attention layers (one fixed-shape "
                             f"mask); this model has {attention} attention")
        self.compile = self.device.type == "cuda" and self.mask_4d if compile is None else compile
        self._compiled_tokens = None  # built at the first compiled step
        self._static_caches: dict[tuple[int, int], StaticCache] = {}  # compiled path: one per shape bucket

    def _image_state(self, prompt: list[int]) -> tuple[bool, int, int]:
        """Whether a prompt ends inside an image span, and how many codes and row ends that span
        already has."""
        v = self.vocab
        if v.boi not in prompt:
            return False, 0, 0
        last_boi = len(prompt) - 1 - prompt[::-1].index(v.boi)
        tail = prompt[last_boi + 1 :]
        if v.eoi in tail:
            return False, 0, 0
        return True, sum(t >= v.image_start for t in tail), sum(t == self.eol for t in tail)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 kv: StaticCache | DynamicCache | None, slots: torch.Tensor) -> torch.Tensor:
        """Next-token logits (R, V) for rows `ids` (R, T) at `positions` (R, T) writing cache `slots` (T,)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=kv is not None, logits_to_keep=1,
                **{self.cache_kwarg: kv}, **({"cache_position": slots} if isinstance(kv, StaticCache) else {}),
            ).logits[:, -1].float()

    def _next_tokens(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                     kv: StaticCache | DynamicCache | None, slots: torch.Tensor, partner: torch.Tensor | None,
                     cfg: torch.Tensor, temperature: torch.Tensor, noise: torch.Tensor | None,
                     in_image: torch.Tensor, n_codes: torch.Tensor, n_eols: torch.Tensor, text_allowed: torch.Tensor,
                     filtering: bool, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
        """One step from the model's inputs to the token drawn for every row (R,).

        A conditional row r is mixed with its unconditional row partner[r] (no partner: no CFG),
        and every row is masked by the modality state of the prompt it is fed (`in_image`, `n_codes`,
        `n_eols`, (R,): with row ends, a full row of codes is followed by <eol>), so that all shapes
        are the bucket's whatever the number of prompts: the compiled step covers this whole
        function, not the forward alone. The caller keeps the conditional rows. `cfg`,
        `temperature`, `top_k` and `top_p` are 0-d tensors, so that a new value is not a new compile;
        `filtering` (top-k or top-p asked for at all) is the one choice a variant is compiled for, so
        that a call that filters nothing does not pay for the sort.

        Sampling is `argmax(p / noise)` with `noise` ~ Exp(1) (R, V), drawn by the caller from its
        generator: exactly what `torch.multinomial(p, 1)` does, the same tokens for the same
        generator, but inside the compiled step and without multinomial's check of `p`, which
        waits for the device. No noise means greedy.
        """
        logits = self._forward(ids, positions, mask, kv, slots)
        if partner is not None:
            uncond = logits[partner]
            logits = uncond + cfg * (logits - uncond)
        allowed = torch.where(in_image[:, None], self.allowed_image, text_allowed)  # (R, V)
        if self.row_ends:
            row_full = in_image & (n_codes >= (n_eols + 1) * self.row_length)
            allowed = torch.where(row_full[:, None], self.allowed_eol, allowed)
            full = in_image & (n_eols >= self.rows)
        else:
            full = in_image & (n_codes >= self.image_len)
        allowed = torch.where(full[:, None], self.allowed_eoi, allowed)
        logits = logits.masked_fill(~allowed, float("-inf"))
        if noise is None:
            return logits.argmax(-1)
        logits = logits / temperature
        probs = (filter_logits(logits, top_k, top_p) if filtering else logits).softmax(-1)
        return (probs / noise).argmax(-1)

    def _compiled_step(self):
        """`_next_tokens` compiled for the decode steps of one call: static cache, 4D mask, shapes
        fixed by `_bucket`. Dynamo keeps torch._dynamo.config.recompile_limit (8) variants of
        `_next_tokens`, buckets and engines together; past that it runs new ones eagerly, which is
        slower but still right."""
        cuda = self.device.type == "cuda"
        if self._compiled_tokens is None:
            # CUDA graphs replay a step's hundreds of kernel launches as one; on the CPU the C++
            # wrapper calls the step's kernels without Python in between (about 6% of a step).
            kind = {"mode": "reduce-overhead"} if cuda else {"options": {"cpp_wrapper": True}}
            self._compiled_tokens = torch.compile(self._next_tokens, dynamic=False, **kind)
        first = True

        def step(*args):
            nonlocal first
            if cuda:  # a new replay of the CUDA graph: the last step's outputs, all read by now, may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            if first:
                first = False
                return self._compiled_tokens(*args)
            # Every later step of the call passes the same objects, shapes and dtypes as the first,
            # whose guards all ran and chose (or compiled) this variant: checking them again would
            # cost some 0.4 ms a step on the CPU (7% of a tiny step).
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self._compiled_tokens(*args)

        return step

    def _static_cache(self, rows: int, length: int) -> StaticCache:
        """The compiled step's cache for a shape bucket, kept across calls (with its memory; one
        call at a time) and reset: a new cache would move the buffers that the compiled step (and
        its CUDA graph) was built on."""
        kv = self._static_caches.get((rows, length))
        if kv is None:
            kv = self._static_caches[rows, length] = StaticCache(config=self.model.config, max_cache_len=length)
        else:
            kv.reset()
        return kv

    @torch.no_grad()  # not inference_mode: a buffer a forward updates (dynamic RoPE) would stay unusable for training
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        params: SamplingParams = SamplingParams(),
        uncond_prompts: list[list[int]] | None = None,
        stop_ids: tuple[int, ...] | None = None,
        allow_images: bool = False,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        cache: str = "static",
    ) -> list[list[int]]:
        """Continue each prompt; returns the new ids of each row, up to and including its stop id.

        `uncond_prompts` (one per prompt) turns on CFG with scale `params.cfg`. `stop_ids` default
        to <eos>; image generation stops at <eoi>. `allow_images` lets text be followed by <boi>.
        `generator` is one for all rows, or one per prompt: each run of consecutive prompts with the
        same generator draws its noise from it as one block, exactly as a call with those prompts
        alone would (and no more once they are all done, where the call is not one of image rows
        of a known length), so that requests batched together (`ugen serve`) keep their own seeds.
        """
        v, n = self.vocab, len(prompts)
        stop_ids = stop_ids or (v.eos,)
        guided = uncond_prompts is not None and params.cfg != 1.0
        if uncond_prompts is not None and len(uncond_prompts) != n:
            raise ValueError("one unconditional prompt per prompt")
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, not {cache!r}")
        rows = prompts + (uncond_prompts if guided else [])
        length = max(len(p) for p in rows)
        compiled = self.compile and cache == "static"
        # A compiled step has fixed shapes: filler rows and unused cache slots round both up.
        n_rows = _bucket(len(rows)) if compiled else len(rows)
        cache_len = _bucket(length + max_new_tokens) if compiled else length + max_new_tokens
        ids = torch.full((n_rows, length), v.pad, dtype=torch.long)  # (R, L) left-padded
        # (R, S): the cache slots each row attends to, its prompt less the padding so far; each step
        # shows the slot it writes. Allocated once, read whole (4D) or through slices (2D).
        seen = torch.zeros((n_rows, cache_len), dtype=torch.bool)
        for r, p in enumerate(rows):
            ids[r, length - len(p) :] = torch.tensor(p)
            seen[r, length - len(p) : length] = True
        seen[len(rows) :, length - 1] = True  # a filler row attends to its own pad token (no empty softmax)
        ids, seen = ids.to(self.device), seen.to(self.device)
        seen_4d = seen[:, None, None, :]  # (R, 1, 1, S): a view, so it follows `seen`
        positions = (seen[:, :length].cumsum(-1) - 1).clamp(min=0)  # (R, L): each row counts from its first token
        # Row r of the batch is next fed the token drawn for row source[r]: itself, its conditional
        # row (an unconditional row), or any row (a filler).
        fillers = torch.zeros(n_rows - len(rows), dtype=torch.long)
        source = torch.cat([torch.arange(n), torch.arange(len(rows) - n), fillers]).to(self.device)
        out = torch.full((n, max_new_tokens), v.pad, dtype=torch.long, device=self.device)

        state = [self._image_state(p) for p in prompts]
        if not self.draws_images and any(inside and codes < self.image_len for inside, codes, _ in state):
            raise UserError("this model has no active image ids (saved before its vocabulary schedule switched any on): "
                            "it cannot draw images")
        # Per row (R,): the modality state of the prompt whose tokens the row is fed (see `source`).
        in_image = torch.tensor([s[0] for s in state], device=self.device)[source]
        n_codes = torch.tensor([s[1] for s in state], device=self.device)[source]
        n_eols = torch.tensor([s[2] for s in state], device=self.device)[source]
        # A conditional row's unconditional row; fillers and unconditional rows pair with themselves.
        partner = (torch.cat([torch.arange(n) + n, torch.arange(n, n_rows)]).to(self.device) if guided else None)
        cfg = torch.tensor(params.cfg, device=self.device)
        temperature = torch.tensor(params.temperature or 1.0, device=self.device)
        filtering = params.top_k > 0 or params.top_p < 1.0
        top_k, top_p = torch.tensor(params.top_k, device=self.device), torch.tensor(params.top_p, device=self.device)
        noise = torch.ones((n_rows, v.size), device=self.device) if params.temperature > 0 else None
        noise_blocks = _noise_blocks(generator, n)
        block_done: dict[int, bool] = {}  # by a block's first row
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        stops = torch.tensor(stop_ids, device=self.device)
        text_allowed = self.allowed_text_or_image if allow_images else self.allowed_text
        # Every row inside an image span and stopping at <eoi>: each draws its missing codes, then
        # <eoi>, so the number of steps is known and no step waits on the device to ask if all are done.
        if all(inside for inside, _, _ in state) and v.eoi in stop_ids:
            span = v.span_length(self.image_len)
            n_steps = min(max_new_tokens, max(max(span - codes - eols, 0) for _, codes, eols in state) + 1)
            ask_done = False
        else:
            n_steps, ask_done = max_new_tokens, True
        # static: every layer's keys and values go into buffers sized once for the whole call, so a
        # step writes one slot instead of concatenating (and a compiled step keeps its shapes);
        # dynamic: transformers' growing cache; none: recompute everything, the reference.
        if cache == "static":
            kv = (self._static_cache(n_rows, cache_len) if compiled
                  else StaticCache(config=self.model.config, max_cache_len=cache_len))
        else:
            kv = DynamicCache() if cache == "dynamic" else None
        decode = self._compiled_step() if compiled else self._next_tokens
        step_ids, step_pos = ids, positions
        slots = torch.arange(length, device=self.device)  # the cache slots this step writes
        steps = 0
        for step in range(n_steps):
            if self.should_stop is not None and self.should_stop():
                raise Abandoned(f"stopped after {step} of {n_steps} steps: nobody waits for the answer")
            if step > 0 and cache == "static" and self.mask_4d:
                next_tokens, mask = decode, seen_4d
            else:  # the keys so far: transformers adds causality (and pads to a static cache's length)
                next_tokens, mask = self._next_tokens, seen[:, : length + step]
            if noise is not None:  # the conditional rows' draw; the rest stay 1
                for start, stop, rows_generator in noise_blocks:
                    if not block_done.get(start, False):
                        noise[start:stop].exponential_(generator=rows_generator)
            token = next_tokens(step_ids, step_pos, mask, kv, slots, partner, cfg, temperature, noise, in_image,
                                n_codes, n_eols, text_allowed, filtering, top_k, top_p)[:n]  # (B,)
            token = torch.where(done, torch.full_like(token, v.pad), token)
            out[:, step] = token
            steps = step + 1
            done = done | torch.isin(token, stops)
            if steps == n_steps or (ask_done and bool(done.all())):
                break
            if ask_done and len(noise_blocks) > 1:
                # A block whose rows are all done draws no more noise, as a call of its rows alone
                # would have stopped: its generator is left where that call leaves it, for the
                # next call (`UGen.draw_interleaved` continues a row over several calls).
                finished = done.tolist()
                block_done = {start: all(finished[start:stop]) for start, stop, _ in noise_blocks}

            new = token[source]  # (R,)
            n_codes = torch.where(new == v.boi, 0, n_codes + (in_image & (new >= v.image_start)).long())
            n_eols = torch.where(new == v.boi, 0, n_eols + (in_image & (new == self.eol)).long())
            in_image = (in_image | (new == v.boi)) & (new != v.eoi)
            seen[:, length + step] = True  # the slot `new` is written to
            slots = slots[-1:] + 1
            if kv is not None:
                step_ids, step_pos = new[:, None], step_pos[:, -1:] + 1
            else:  # recompute everything: the reference the cached path is tested against
                step_ids = torch.cat([step_ids, new[:, None]], dim=1)
                step_pos = torch.cat([step_pos, step_pos[:, -1:] + 1], dim=1)

        results = []
        for row in out[:, :steps].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
            results.append(row[:cut])
        return results
