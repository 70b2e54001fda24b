"""The sampling engine: static cache = dynamic cache = no cache (4D and 2D masks), compiled = eager,
greedy is argmax (with CFG too), seeds reproduce, modality holds, only active image ids are drawn, image
rows decode without a host sync a step."""

import pytest
import torch

from ugen.errors import UserError
from ugen.model import build_model
from ugen.sampling import CACHES, Engine, SamplingParams, filter_logits
from ugen.sequences import caption_prompt, t2i_prompt, vqa_prompt
from ugen.vocab import Vocab

GRID = 3
V = Vocab(num_text=40, num_image=64)


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    model = build_model("tiny", V, 64, torch.device("cpu")).eval()  # untrained: the hardest case for constraints
    return Engine(model, V, GRID)


def mixed_prompts():
    """Prompts of different lengths (left padding) and kinds."""
    return [
        caption_prompt(V, list(range(GRID * GRID))),
        vqa_prompt(V, [5] * GRID * GRID, [1, 2, 3]),
        [V.bos, *V.from_text([7, 8])],
    ]


def assert_caches_agree(engine: Engine):
    """Left padding (prompts of several lengths), greedy and sampled, with and without CFG, image
    rows alone (a known number of steps: some rows start with codes and finish first) and mixed
    with text rows (stopped by asking the device)."""
    prompts = mixed_prompts()
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=5)):
        drawn = {cache: engine.generate(prompts, max_new_tokens=12, params=params, cache=cache,
                                        generator=torch.Generator().manual_seed(1)) for cache in CACHES}
        assert drawn["static"] == drawn["dynamic"] == drawn["none"]
    cond = [t2i_prompt(V, [3, 4, 5]), t2i_prompt(V, [9]), t2i_prompt(V, []), t2i_prompt(V, [2]) + V.from_codes([7, 8])]
    uncond = [t2i_prompt(V, None)] * len(cond)
    for params in (SamplingParams(temperature=0, cfg=3.0), SamplingParams(temperature=0.7, cfg=1.5)):
        kw = dict(max_new_tokens=GRID * GRID + 1, params=params, uncond_prompts=uncond, stop_ids=(V.eoi,))
        drawn = {cache: engine.generate(cond, cache=cache, generator=torch.Generator().manual_seed(2), **kw) for cache in CACHES}
        assert drawn["static"] == drawn["dynamic"] == drawn["none"]
        assert [len(row) for row in drawn["static"]] == [GRID * GRID + 1] * 3 + [GRID * GRID - 1]
        assert all(row[-1] == V.eoi for row in drawn["static"])
    image_and_text = [t2i_prompt(V, [3]), [V.bos, *V.from_text([7, 8])]]
    kw = dict(max_new_tokens=GRID * GRID + 3, params=SamplingParams(temperature=1.0), stop_ids=(V.eoi, V.eos))
    drawn = {cache: engine.generate(image_and_text, cache=cache, generator=torch.Generator().manual_seed(3), **kw)
             for cache in CACHES}
    assert drawn["static"] == drawn["dynamic"] == drawn["none"]


def test_static_dynamic_and_no_cache_draw_the_same_tokens(engine):
    assert engine.mask_4d  # SDPA: the static cache decodes with the ready 4D mask
    assert_caches_agree(engine)
    with pytest.raises(ValueError, match="cache must be one of"):
        engine.generate(mixed_prompts(), max_new_tokens=2, cache="paged")


def test_the_2d_mask_path_agrees_too():
    """Attention kernels other than SDPA (flash-attn, eager) get the 2D mask of the keys so far."""
    torch.manual_seed(0)
    model = build_model("tiny", V, 64, torch.device("cpu")).eval()
    model.set_attn_implementation("eager")
    engine = Engine(model, V, GRID)
    assert not engine.mask_4d
    assert_caches_agree(engine)
    with pytest.raises(ValueError, match="needs SDPA attention"):
        Engine(model, V, GRID, compile=True)


def test_image_rows_decode_without_a_host_sync_each_step(engine, monkeypatch):
    """Asking the device whether all rows are done (`bool(done.all())`) waits for the step to
    finish; image rows that stop at <eoi> have a known length and never ask."""
    asked = []
    to_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: asked.append(1) or to_bool(t))
    kw = dict(max_new_tokens=GRID * GRID + 1, params=SamplingParams(temperature=1.0),
              generator=torch.Generator().manual_seed(0))
    engine.generate([t2i_prompt(V, [1]), t2i_prompt(V, [2, 3])], stop_ids=(V.eoi,), **kw)
    image_asks, asked[:] = len(asked), []
    engine.generate([[V.bos, *V.from_text([7])]] * 2, **kw)
    assert image_asks < 3 <= len(asked)  # the text rows ask every step


@pytest.mark.slow
def test_compiled_decode_draws_what_eager_draws(engine):
    """The compiled step (about 20 s of compiling on the CPU): filler rows round the batch up
    to its shape bucket, and a second call reuses the bucket's cache."""
    compiled = Engine(engine.model, V, GRID, compile=True)
    cond = [t2i_prompt(V, [3, 4, 5]), t2i_prompt(V, [9]), t2i_prompt(V, [2]) + V.from_codes([7, 8])]
    kw = dict(max_new_tokens=GRID * GRID + 1, params=SamplingParams(temperature=0.7, cfg=1.5),
              uncond_prompts=[t2i_prompt(V, None)] * 3, stop_ids=(V.eoi,))
    run = lambda e, seed: e.generate(cond, generator=torch.Generator().manual_seed(seed), **kw)
    text = lambda e, **filters: e.generate([[V.bos, *V.from_text([7])], [V.bos, *V.from_text([2, 5, 9])]], max_new_tokens=5,
                                           params=SamplingParams(temperature=0.9, **(filters or {"top_k": 20})),
                                           allow_images=True, generator=torch.Generator().manual_seed(2))
    for seed in (0, 1):
        assert run(compiled, seed) == run(engine, seed)
    assert list(compiled._static_caches) == [(8, 16)]  # 6 rows and 16 slots: one bucket, one compile
    # Another variant (no CFG, text rows, top-k), then the first again: only the first step of a
    # call checks the guards that pick the variant, later steps skip them.
    assert text(compiled) == text(engine)
    assert run(compiled, 3) == run(engine, 3)
    assert list(compiled._static_caches) == [(8, 16), (2, 16)]
    # Other top-k and top-p values (a client's choice) run the same variant: they are tensors in
    # the step, not constants compiled in (each would be a new compile, and guards are skipped).
    with torch._dynamo.config.patch(error_on_recompile=True):
        for filters in ({"top_k": 7}, {"top_k": 3, "top_p": 0.8}, {"top_p": 0.5}):
            assert text(compiled, **filters) == text(engine, **filters)


def test_temperature_zero_is_greedy(engine):
    prompt = [V.bos, *V.from_text([1, 2, 3])]
    out = engine.generate([prompt], max_new_tokens=5, params=SamplingParams(temperature=0))[0]
    ids = list(prompt)
    for token in out:  # recompute each step by hand: argmax over the allowed (text + eos) ids
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1]
        allowed = logits.clone()
        allowed[: V.text_start] = float("-inf")
        allowed[V.eos] = logits[V.eos]
        allowed[V.image_start :] = float("-inf")
        assert token == int(allowed.argmax())
        ids.append(token)


def test_seed_reproduces_and_different_seeds_differ(engine):
    prompts = [t2i_prompt(V, [1])] * 4
    params = SamplingParams(temperature=1.0)
    run = lambda seed: engine.generate(prompts, max_new_tokens=10, params=params, generator=torch.Generator().manual_seed(seed), stop_ids=(V.eoi,))
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_one_generator_per_prompt_draws_what_each_prompt_group_draws_alone(engine):
    """Prompts batched with their own generators (runs of the same one are one block) draw what
    separate calls with fresh generators of those seeds draw."""
    prompts = mixed_prompts()
    params = SamplingParams(temperature=1.0)
    seeded = lambda seed: torch.Generator().manual_seed(seed)
    shared = seeded(7)
    together = engine.generate(prompts, max_new_tokens=8, params=params, generator=[seeded(3), shared, shared])
    alone = (engine.generate(prompts[:1], max_new_tokens=8, params=params, generator=seeded(3))
             + engine.generate(prompts[1:], max_new_tokens=8, params=params, generator=seeded(7)))
    assert together == alone
    with pytest.raises(ValueError, match="one generator per prompt"):
        engine.generate(prompts, max_new_tokens=2, params=params, generator=[shared])


def test_modality_constraints_hold_for_an_untrained_model(engine):
    torch.manual_seed(0)
    params = SamplingParams(temperature=1.5)  # flat distributions: anything unconstrained would show up
    images = engine.generate([t2i_prompt(V, [1, 2])] * 8, max_new_tokens=30, params=params, stop_ids=(V.eoi,),
                             generator=torch.Generator().manual_seed(0))
    for row in images:
        assert len(row) == GRID * GRID + 1 and row[-1] == V.eoi
        assert all(t >= V.image_start for t in row[:-1])
    texts = engine.generate(mixed_prompts() * 3, max_new_tokens=25, params=params, generator=torch.Generator().manual_seed(0))
    for row in texts:
        assert all(V.text_start <= t < V.image_start or t == V.eos for t in row)
    # With images allowed after text, any <boi> opens a span of exactly GRID*GRID codes and an <eoi>.
    rows = engine.generate([[V.bos]] * 16, max_new_tokens=40, params=params, allow_images=True,
                           generator=torch.Generator().manual_seed(0))
    for row in rows:
        i = 0
        while i < len(row):
            if row[i] == V.boi:
                span = row[i + 1 : i + 1 + GRID * GRID]
                assert all(t >= V.image_start for t in span)
                if i + 1 + GRID * GRID < len(row):
                    assert row[i + 1 + GRID * GRID] == V.eoi
                i += GRID * GRID + 2
            else:
                assert row[i] < V.image_start
                i += 1


def test_greedy_cfg_is_the_guided_argmax_computed_by_hand(engine):
    """Each step's token is argmax over image ids (then <eoi>) of u + s * (c - u), where c and u
    are the model's last logits on the conditional and unconditional sequences so far, recomputed
    here without a cache or padding; two prompts of different lengths test the left padding."""
    scale = 3.0
    prompts = [t2i_prompt(V, [4, 5, 6, 7]), t2i_prompt(V, [9])]
    uncond = t2i_prompt(V, None)
    out = engine.generate(prompts, max_new_tokens=GRID * GRID + 1, params=SamplingParams(temperature=0, cfg=scale),
                          uncond_prompts=[uncond] * 2, stop_ids=(V.eoi,))
    last = lambda ids: engine.model(input_ids=torch.tensor([ids])).logits[0, -1]
    guidance_mattered = False
    for prompt, row in zip(prompts, out):
        assert len(row) == GRID * GRID + 1
        cond_ids, uncond_ids = list(prompt), list(uncond)
        for i, token in enumerate(row):
            allowed = torch.zeros(V.size, dtype=torch.bool)
            if i < GRID * GRID:
                allowed[V.image_start :] = True
            else:
                allowed[V.eoi] = True
            c, u = last(cond_ids), last(uncond_ids)
            guided = (u + scale * (c - u)).masked_fill(~allowed, float("-inf"))
            assert token == int(guided.argmax())
            guidance_mattered |= token != int(c.masked_fill(~allowed, float("-inf")).argmax())
            cond_ids.append(token)
            uncond_ids.append(token)
    assert guidance_mattered  # the plain conditional argmax would have drawn other codes


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_only_active_image_ids_are_drawn(engine, cfg):
    """A model saved before its vocabulary schedule finished never trained the inactive ids."""
    active = torch.zeros(V.num_image, dtype=torch.bool)
    active[[3, 17, 40, 41]] = True
    kw = dict(max_new_tokens=GRID * GRID + 1, params=SamplingParams(temperature=2.0, cfg=cfg),
              uncond_prompts=[t2i_prompt(V, None)] * 8, stop_ids=(V.eoi,))
    prompts = [t2i_prompt(V, [i]) for i in range(8)]
    codes = lambda e: {c for row in e.generate(prompts, generator=torch.Generator().manual_seed(0), **kw)
                       for c in V.to_codes(row)}
    masked = codes(Engine(engine.model, V, GRID, active_image=active))
    assert masked <= {3, 17, 40, 41} and len(masked) > 1
    assert not codes(engine) <= {3, 17, 40, 41}  # without the mask, inactive ids are drawn


def test_no_active_image_id_refuses_images_and_still_writes_text(engine):
    """A model saved in its text-only phase: an image is a clear error, not NaNs; text still works
    and never opens an image it could not fill."""
    text_only = Engine(engine.model, V, GRID, active_image=torch.zeros(V.num_image, dtype=torch.bool))
    with pytest.raises(UserError, match="no active image ids"):
        text_only.generate([t2i_prompt(V, [1])], max_new_tokens=GRID * GRID + 1, stop_ids=(V.eoi,))
    kw = dict(max_new_tokens=20, params=SamplingParams(temperature=2.0), allow_images=True)
    prompts = [[V.bos]] * 16
    rows = text_only.generate(prompts, generator=torch.Generator().manual_seed(0), **kw)
    assert all(V.text_start <= t < V.image_start or t == V.eos for row in rows for t in row)
    assert any(V.boi in row for row in engine.generate(prompts, generator=torch.Generator().manual_seed(0), **kw))
    with pytest.raises(ValueError, match="active_image must be a bool mask of shape"):
        Engine(engine.model, V, GRID, active_image=torch.ones(V.num_image + 1, dtype=torch.bool))


def test_filter_logits_keeps_top_k_and_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, 3, 0.9)).tolist() == [[True, True, True, False]]
    ties = torch.tensor([[2.0, 1.0, 1.0, 0.0]])  # the k-th value's ties are kept, as torch.topk's threshold does
    assert torch.isfinite(filter_logits(ties, 2, 1.0)).tolist() == [[True, True, True, False]]


def _reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k by torch.topk's threshold, then the nucleus of what is left, sorted again: the plain
    two-pass way, against which the one-sort tensor version is checked."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (1, 1.0), (5, 1.0), (50, 1.0), (0, 0.9), (0, 0.3), (7, 0.8), (200, 0.95)])
def test_filter_logits_agrees_with_the_two_pass_reference(top_k, top_p):
    logits = torch.randn(6, 120, generator=torch.Generator().manual_seed(top_k))
    expected = _reference_filter(logits, top_k, top_p)
    got = filter_logits(logits, torch.tensor(top_k), torch.tensor(top_p))
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
    assert torch.equal(got[torch.isfinite(got)], logits[torch.isfinite(expected)])


ROWS_V = Vocab(num_text=40, num_image=64, row_length=GRID)


def test_row_ends_fill_each_row_then_end_it():
    """With row ends every image is GRID rows of GRID codes, each followed by <eol>, then <eoi>:
    from a bare <boi>, from inside a row, and from just after a row's end; the caches agree."""
    torch.manual_seed(0)
    model = build_model("tiny", ROWS_V, 64, torch.device("cpu")).eval()
    engine = Engine(model, ROWS_V, GRID)
    eol, codes = ROWS_V.special("<eol>"), ROWS_V.image_span(range(GRID * GRID))
    assert codes[GRID] == eol and len(codes) == ROWS_V.span_length(GRID * GRID) == GRID * (GRID + 1)
    starts = [t2i_prompt(ROWS_V, [3]), t2i_prompt(ROWS_V, [3]) + codes[:2], t2i_prompt(ROWS_V, [4]) + codes[: GRID + 1]]
    uncond = [t2i_prompt(ROWS_V, None)] * len(starts)
    for params in (SamplingParams(temperature=0, cfg=2.0), SamplingParams(temperature=1.3, cfg=1.0)):
        drawn = {cache: engine.generate(starts, max_new_tokens=len(codes) + 1, params=params, uncond_prompts=uncond,
                                        stop_ids=(ROWS_V.eoi,), cache=cache, generator=torch.Generator().manual_seed(4))
                 for cache in CACHES}
        assert drawn["static"] == drawn["dynamic"] == drawn["none"]
        for start, row in zip(starts, drawn["static"]):
            span = start[start.index(ROWS_V.boi) + 1 :] + row
            assert span[-1] == ROWS_V.eoi and len(span) == len(codes) + 1
            for r in range(GRID):
                line = span[r * (GRID + 1) : (r + 1) * (GRID + 1)]
                assert all(t >= ROWS_V.image_start for t in line[:-1]) and line[-1] == eol, span
    assert Vocab.from_dict(ROWS_V.to_dict()) == ROWS_V and Vocab.from_dict({**V.to_dict()}).row_length == 0
