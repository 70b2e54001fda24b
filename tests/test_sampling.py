"""The sampling engine: static cache = dynamic cache = no cache (4D and 2D masks), compiled = eager,
greedy is argmax, seeds reproduce, modality holds, image rows decode without a host sync a step."""

import pytest
import torch

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
    text = lambda e: e.generate([[V.bos, *V.from_text([7])], [V.bos, *V.from_text([2, 5, 9])]], max_new_tokens=5,
                                params=SamplingParams(temperature=0.9, top_k=20), allow_images=True,
                                generator=torch.Generator().manual_seed(2))
    for seed in (0, 1):
        assert run(compiled, seed) == run(engine, seed)
    assert list(compiled._static_caches) == [(8, 16)]  # 6 rows and 16 slots: one bucket, one compile
    # Another variant (no CFG, text rows, top-k), then the first again: only the first step of a
    # call checks the guards that pick the variant, later steps skip them.
    assert text(compiled) == text(engine)
    assert run(compiled, 3) == run(engine, 3)
    assert list(compiled._static_caches) == [(8, 16), (2, 16)]


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


def test_cfg_scale_one_matches_plain_conditional_sampling(engine):
    cond = [t2i_prompt(V, [4, 5])]
    kw = dict(max_new_tokens=GRID * GRID + 1, params=SamplingParams(temperature=0, cfg=1.0), stop_ids=(V.eoi,))
    assert engine.generate(cond, uncond_prompts=[t2i_prompt(V, None)], **kw) == engine.generate(cond, **kw)


def test_filter_logits_keeps_top_k_and_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.5)).tolist() == [[True, False, False, False]]
