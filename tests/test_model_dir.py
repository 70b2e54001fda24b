"""A model directory loads with plain transformers (same logits) and with ugen.load."""

import json

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

import ugen
from ugen.sampling import SamplingParams
from ugen.shapes import make_examples


def test_plain_transformers_gives_the_same_logits(tiny_model_dir):
    model = ugen.load(tiny_model_dir, device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, model.vocab.size, (2, 30))
    with torch.no_grad():
        ours = model.model(input_ids=ids).logits
        theirs = plain(input_ids=ids).logits
    assert type(plain).__name__ == "LlamaForCausalLM"
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
