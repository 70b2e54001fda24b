"""A model directory loads with plain transformers and with ugen.load, and its logits are those of
a Llama forward written out here; ugen.load draws only the image ids its training switched on."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import ugen
from ugen.errors import UserError
from ugen.model import build_model, init_image_rows_from_pixels
from ugen.sampling import SamplingParams
from ugen.shapes import make_examples
from ugen.vocab import Vocab


def llama_logits(directory, ids: torch.Tensor) -> torch.Tensor:
    """The logits (B, T, V) of the Llama in `directory` on `ids` (B, T), in float64 from the saved
    tensors and config.json alone: the reference that the model's own forward is checked against."""
    config = json.loads((directory / "config.json").read_text())
    weights = {name: w.double() for name, w in load_file(directory / "model.safetensors").items()}
    used = set()

    def w(name: str) -> torch.Tensor:
        used.add(name)
        return weights[name]

    rope = config.get("rope_parameters") or {}
    assert rope.get("rope_type", "default") == "default" and config.get("rope_scaling") is None  # plain RoPE only
    theta = rope.get("rope_theta", config.get("rope_theta"))
    heads, kv_heads, eps = config["num_attention_heads"], config["num_key_value_heads"], config["rms_norm_eps"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    B, T = ids.shape

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # RMSNorm
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    # Rotary embedding, rotate-half convention: dims i and i + head_dim/2 turn by position * theta^(-2i/head_dim).
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (head_dim/2,)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, head_dim/2)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()  # (T, head_dim)

    def rotate(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, head_dim)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], -1) * sin

    def split(x: torch.Tensor, n: int) -> torch.Tensor:  # (B, T, n * head_dim) -> (B, n, T, head_dim)
        return x.view(B, T, n, head_dim).transpose(1, 2)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = w("model.embed_tokens.weight")[ids]  # (B, T, C)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, w(p + "input_layernorm.weight"))
        q = rotate(split(h @ w(p + "self_attn.q_proj.weight").T, heads))
        k = rotate(split(h @ w(p + "self_attn.k_proj.weight").T, kv_heads))
        v = split(h @ w(p + "self_attn.v_proj.weight").T, kv_heads)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))  # each KV head serves a group of query heads
        scores = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~causal, float("-inf"))  # (B, H, T, T)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, heads * head_dim)
        x = x + attended @ w(p + "self_attn.o_proj.weight").T
        h = norm(x, w(p + "post_attention_layernorm.weight"))
        gate, up = h @ w(p + "mlp.gate_proj.weight").T, h @ w(p + "mlp.up_proj.weight").T
        x = x + (F.silu(gate) * up) @ w(p + "mlp.down_proj.weight").T
    x = norm(x, w("model.norm.weight"))
    logits = x @ w("model.embed_tokens.weight" if config.get("tie_word_embeddings") else "lm_head.weight").T
    assert used == set(weights), f"weights the reference does not use: {set(weights) - used}"  # no bias, no extra piece
    return logits


def test_logits_are_a_llama_forward_written_by_hand_and_plain_transformers_agrees(tiny_model_dir):
    model = ugen.load(tiny_model_dir, device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, model.vocab.size, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.model(input_ids=ids).logits
        theirs = plain(input_ids=ids).logits
    assert type(plain).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(ours.double(), llama_logits(tiny_model_dir, ids), rtol=0, atol=1e-4)
    torch.testing.assert_close(ours, theirs)


def test_directory_holds_everything_needed(tiny_model_dir):
    meta = json.loads((tiny_model_dir / "ugen.json").read_text())
    for name in ("config.json", "model.safetensors", "text.model", "vq/vq.safetensors", "vq/vq.json"):
        assert (tiny_model_dir / name).is_file(), name
    assert {"vocab", "schedule", "image_size", "grid", "pretrain"} <= set(meta)
    assert meta["vocab"]["num_image"] == len(meta["schedule"]["order"])


def test_load_gives_caption_ask_generate_complete(tiny_model_dir, tmp_path):
    model = ugen.load(tiny_model_dir, device="cpu")
    examples = make_examples("test", 3)
    path = tmp_path / "scene.png"
    Image.fromarray(examples[0].image).resize((100, 100)).convert("RGBA").save(path)  # other size and mode
    captions = model.caption([path, examples[1].image, Image.fromarray(examples[2].image)])
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert isinstance(model.ask(path, "how many objects are there?"), str)
    images = model.generate("a red circle", num=2, params=SamplingParams(temperature=1.0, cfg=2.0), seed=3)
    assert [i.size for i in images] == [(model.image_size, model.image_size)] * 2
    again = model.generate("a red circle", num=2, params=SamplingParams(temperature=1.0, cfg=2.0), seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))
    text = model.complete("there are two objects")
    assert text.startswith("there are two objects")


def test_load_draws_only_the_image_ids_its_training_switched_on(tiny_model_dir, tmp_path):
    """A model saved after `step` steps trained the ids active in steps 0 .. step-1; an early save
    must not draw the rest (still at initialization), and one saved in the text-only phase draws
    no image at all but still writes text."""
    meta = json.loads((tiny_model_dir / "ugen.json").read_text())
    schedule = meta["schedule"]
    first_add = set(schedule["order"][: schedule["ids_per_add"]])  # switched on by the first phase-1 step
    assert schedule["kind"] == "progressive" and 0 < len(first_add) < meta["vocab"]["num_image"]

    def saved_at(step: int | None):
        directory = tmp_path / f"model-{step}"
        shutil.copytree(tiny_model_dir, directory)
        edited = {k: v for k, v in meta.items() if k != "step"} | ({} if step is None else {"step": step})
        (directory / "ugen.json").write_text(json.dumps(edited))
        return ugen.load(directory, device="cpu")

    captions = [[i % 7 + 1] * 3 for i in range(16)]
    params = SamplingParams(temperature=2.0, cfg=1.5)  # flat distributions: any allowed id shows up
    drawn = lambda model: set(model.draw_codes(captions, params, torch.Generator().manual_seed(0))[2].flatten().tolist())
    assert drawn(saved_at(schedule["text_only_steps"] + 1)) <= first_add  # one phase-1 step done
    assert not drawn(saved_at(None)) <= first_add  # no step saved: every id may be drawn

    text_only = saved_at(schedule["text_only_steps"])
    with pytest.raises(UserError, match="no active image ids"):
        text_only.generate("a red circle")
    assert isinstance(text_only.complete("there are two objects"), str)


def test_image_rows_start_from_what_the_codes_look_like():
    vocab = Vocab(num_text=40, num_image=64)
    model = build_model("tiny", vocab, 64, torch.device("cpu"))
    before = {n: layer.weight.clone() for n, layer in (("in", model.get_input_embeddings()), ("out", model.get_output_embeddings()))}
    torch.manual_seed(0)
    patches = torch.rand(64, 4) @ torch.rand(4, 48)  # a few factors, as color and coverage are in real patches
    patches[1] = patches[0]  # two codes that look the same
    patches[2] = (patches[3] + patches[4]) / 2  # one halfway between two others
    init_image_rows_from_pixels(model, vocab, patches, seed=0)
    codes = torch.tensor(vocab.from_codes(range(64)))
    pixel_distance = torch.pdist(patches)
    for name, layer in (("in", model.get_input_embeddings()), ("out", model.get_output_embeddings())):
        rows = layer.weight[codes].detach()
        assert torch.equal(rows[1], rows[0])
        assert torch.allclose(rows[2], (rows[3] + rows[4]) / 2, atol=1e-6)  # a linear map of the pixels
        # Codes that look alike start alike: row distances follow pixel distances (a random init's do not).
        assert torch.corrcoef(torch.stack([torch.pdist(rows), pixel_distance]))[0, 1] > 0.9
        assert torch.corrcoef(torch.stack([torch.pdist(before[name][codes]), pixel_distance]))[0, 1] < 0.3
        assert rows.std() == pytest.approx(before[name].std().item(), rel=0.2)  # the layer's own init scale
        others = torch.ones(vocab.size, dtype=torch.bool)
        others[codes] = False
        assert torch.equal(layer.weight[others], before[name][others])  # text rows and specials as built
