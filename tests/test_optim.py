"""The optimizer and LR-schedule choices of pretraining: Muon with AdamW as one optimizer, the
warmup-stable-decay schedule and bf16 autocast on the CPU."""

import pytest
import torch

from ugen.errors import UserError
from ugen.model import build_model
from ugen.training import autocast_context, load_checkpoint, lr_schedule, make_optimizer, save_checkpoint
from ugen.vocab import Vocab

VOCAB = Vocab(num_text=10, num_image=8)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny", VOCAB, 32, torch.device("cpu"))


def _step(model, optimizer, scheduler, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB.size, (2, 12), generator=generator)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def test_muon_adamw_steps_as_muon_and_adamw_apart():
    """The combined optimizer moves the hidden matrices as torch's Muon alone would and the rest
    (embeddings, head, norms) as AdamW alone would, each at its own LR under one scheduler."""
    combined_model, reference_model = _model(), _model()
    combined = make_optimizer(combined_model, 1e-3, 0.1, kind="muon", muon_lr=0.02)
    factor = lr_schedule("wsd", 2, 6, 0.1, 0.5)
    combined_scheduler = torch.optim.lr_scheduler.LambdaLR(combined, factor)

    # The reference: the same split of parameters, by name, into two optimizers and two schedulers.
    names = dict(reference_model.named_parameters())
    vocab_names = {"model.embed_tokens.weight", "lm_head.weight"}
    hidden = [p for n, p in names.items() if p.dim() == 2 and n not in vocab_names]
    rest = [p for n, p in names.items() if p.dim() != 2 or n in vocab_names]
    muon = torch.optim.Muon(hidden, lr=0.02, weight_decay=0.1, adjust_lr_fn="original")
    adamw = torch.optim.AdamW(rest, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (muon, adamw)]

    for step in range(4):
        _step(combined_model, combined, combined_scheduler, seed=step)
        generator = torch.Generator().manual_seed(step)
        ids = torch.randint(0, VOCAB.size, (2, 12), generator=generator)
        reference_model(input_ids=ids, labels=ids).loss.backward()
        for o, s in zip((muon, adamw), schedulers):
            o.step()
            s.step()
            o.zero_grad(set_to_none=True)
    for name, p in combined_model.named_parameters():
        torch.testing.assert_close(p, names[name], rtol=0, atol=0, msg=name)
    assert [g["lr"] for g in combined.param_groups] == pytest.approx([0.02 * factor(4), 1e-3 * factor(4)])


def test_muon_adamw_resumes_from_a_checkpoint(tmp_path):
    """Saved after 2 steps and loaded into a fresh model and optimizer, 2 more steps give the
    parameters of 4 uninterrupted steps (Muon's momentum and AdamW's moments both restored)."""
    def fresh():
        model = _model()
        optimizer = make_optimizer(model, 1e-3, 0.1, kind="muon")
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule("wsd", 1, 4, 0.1, 0.5))

    whole = fresh()
    for step in range(4):
        _step(*whole, seed=step)
    first = fresh()
    for step in range(2):
        _step(*first, seed=step)
    path = save_checkpoint(tmp_path, 2, *first, {})
    resumed = fresh()
    load_checkpoint(path, *resumed)
    assert resumed[1].param_groups[0] is resumed[1].muon.param_groups[0]  # the scheduler still reaches Muon
    for step in range(2, 4):
        _step(*resumed, seed=step)
    for (name, p), q in zip(whole[0].named_parameters(), resumed[0].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_an_adamw_checkpoint_does_not_load_into_muon(tmp_path):
    model = _model()
    adamw = make_optimizer(model, 1e-3, 0.1)
    path = save_checkpoint(tmp_path, 1, model, adamw, torch.optim.lr_scheduler.LambdaLR(adamw, lambda s: 1.0), {})
    muon = make_optimizer(model, 1e-3, 0.1, kind="muon")
    with pytest.raises(UserError, match="not Muon with AdamW"):
        load_checkpoint(path, model, muon, torch.optim.lr_scheduler.LambdaLR(muon, lambda s: 1.0))


def test_warmup_stable_decay_by_hand():
    """10 steps, warmup 2, the last 40% (4 steps) decaying linearly to 0.1."""
    factor = lr_schedule("wsd", 2, 10, 0.1, 0.4)
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1]
    assert [factor(s) for s in range(11)] == pytest.approx(expected)
    with pytest.raises(UserError):
        lr_schedule("wsd", 2, 10, 0.1, 0.0)
    with pytest.raises(UserError):
        lr_schedule("linear", 2, 10, 0.1)


def test_bf16_autocast_on_the_cpu(monkeypatch):
    """`bf16` runs a matmul in bf16 on the CPU, `fp32` does not; `auto` is bf16 only on a CPU
    with bf16 instructions."""
    from ugen import training

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast_context(torch.device("cpu"), "bf16")():
        assert layer(x).dtype == torch.bfloat16
    with autocast_context(torch.device("cpu"), "fp32")():
        assert layer(x).dtype == torch.float32
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(training, "cpu_has_bf16", lambda: native)
        with autocast_context(torch.device("cpu"), "auto")():
            assert layer(x).dtype == dtype


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_parameter_groups_keep_the_model_order(kind):
    """A checkpoint's optimizer state is matched to parameters by their order in the groups: each
    group lists its parameters as the model does (the decayed matrices, then the rest)."""
    model = _model()
    optimizer = make_optimizer(model, 1e-3, 0.1, kind=kind)
    order = {id(p): i for i, p in enumerate(model.parameters())}
    for group in optimizer.param_groups:
        positions = [order[id(p)] for p in group["params"]]
        assert positions == sorted(positions)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(order)
