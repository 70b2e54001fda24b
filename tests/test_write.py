"""Text with images inside it: a sampled row split into parts, `UGen.write`, `ugen text --images`,
the API's `/text` with images (batched like the rest), and the eval's check of an image against the
sentence before it."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import PIL.Image
import pytest

import ugen
from conftest import live_server, opens_images, run_in_process
from ugen.api import WRITE_DEFAULTS, save_parts
from ugen.cli import main as ugen_main
from ugen.metrics import images_match_sentences
from ugen.sampling import SamplingParams
from ugen.serve import create_app
from ugen.serve.tasks import Task, run_group
from ugen.shapes import Scene, ShapeObject, render


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ugen.load(tiny_model_dir)


def as_arrays(parts):
    return [p if isinstance(p, str) else np.asarray(p) for p in parts]


def assert_same_parts(a, b):
    assert len(a) == len(b)
    for x, y in zip(as_arrays(a), as_arrays(b)):
        if isinstance(x, str):
            assert x == y
        else:
            np.testing.assert_array_equal(x, y)


def test_a_row_splits_into_text_and_complete_images(model):
    v = model.vocab
    codes = np.arange(model.image_len) % v.num_image
    first, second = v.from_text(model.text.encode("a red circle")), v.from_text(model.text.encode("two squares"))
    row = [v.bos, *first, v.boi, *v.from_codes(codes), v.eoi, *second, v.boi, *v.from_codes(codes[:3])]  # cut short
    parts = model.parts(row)
    assert parts[0] == "a red circle" and parts[2] == "two squares" and len(parts) == 3
    np.testing.assert_array_equal(np.asarray(parts[1]), model.decode_codes(codes[None])[0])


def test_write_draws_as_many_whole_images_as_fit_the_length(model):
    prompt = model.write_prompt("a red circle")
    with opens_images(model):
        parts = model.write(["a red circle"])[0]
    assert parts[0] == "a red circle"
    # each image is <boi>, its codes and <eoi>; the last, cut by the length, is dropped
    expected = (model.max_len - len(prompt)) // (model.image_len + 2)
    assert expected >= 1 and len(parts) == 1 + expected
    assert all(isinstance(p, PIL.Image.Image) and p.size == (model.image_size,) * 2 for p in parts[1:])


def test_write_tasks_batched_give_what_each_gives_alone(model):
    """Text stretches of different lengths and images in between (the tiny model nudged to open
    images now and then): every row's text and images are those it draws alone, its generator
    carried from one stretch to the next."""
    params, drawing = SamplingParams(temperature=1.0), SamplingParams(temperature=1.15, cfg=2.0)
    tasks = [Task("write", params, 0, "a red circle", max_new_tokens=model.max_len, image_params=drawing),
             Task("write", params, 1, "two blue squares and a green triangle", max_new_tokens=model.max_len,
                  image_params=drawing),
             Task("write", params, 2, "a circle", max_new_tokens=40, image_params=drawing)]
    with opens_images(model, bias=5.0):
        together = run_group(model, tasks)
        alone = [model.write([t.text], params, t.seed, t.max_new_tokens, drawing)[0] for t in tasks]
    for a, b in zip(together, alone):
        assert_same_parts(a, b)
    stretches = [[len(p) if isinstance(p, str) else 0 for p in parts] for parts in together]
    assert sum(0 in s for s in stretches) >= 2 and len({tuple(s) for s in stretches}) == 3, stretches


def test_ugen_text_images_writes_markdown_with_the_pngs_beside_it(model, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ugen.cli.load", lambda *args, **kwargs: model)
    out = tmp_path / "story.md"
    with opens_images(model):
        result = run_in_process(capsys, ugen_main, "text", "--model", str(tiny_model_dir), "--prompt", "a red circle",
                                "--images", "--out", str(out), "--seed", "3", "--upscale", "2")
        parts = model.write(["a red circle"], WRITE_DEFAULTS, 3)[0]
    assert result.returncode == 0, result.stderr
    assert "trained without interleaved rows" in result.stderr  # the tiny model's mixture has none
    pngs = [tmp_path / f"story-{i}.png" for i in range(1, len(parts))]
    assert result.stdout.split() == [str(out), *map(str, pngs)]
    lines = out.read_text().strip().split("\n\n")
    assert lines == ["a red circle", *[f"![image {i}]({p.name})" for i, p in enumerate(pngs, 1)]]
    for png, image in zip(pngs, parts[1:]):
        big = np.asarray(PIL.Image.open(png))
        np.testing.assert_array_equal(big[::2, ::2], np.asarray(image))  # nearest-neighbour x2


def test_the_api_returns_text_and_image_parts(model):
    with opens_images(model), live_server(create_app(model)) as url:
        answer = httpx.post(f"{url}/text", json={"prompt": "a red circle", "images": True, "seed": 5}, timeout=60).json()
        expected = model.write(["a red circle"], WRITE_DEFAULTS, 5)[0]
    got = [p["text"] if "text" in p else PIL.Image.open(io.BytesIO(base64.b64decode(p["image"]))) for p in answer["parts"]]
    assert any("image" in p for p in answer["parts"])
    assert_same_parts(got, expected)


def test_an_image_matches_the_sentence_before_it_when_it_shows_exactly_what_it_names(tmp_path):
    matches = images_match_sentences
    red_circle = PIL.Image.fromarray(render(Scene((ShapeObject("circle", "red", "large", 24.0, 24.0, 15.0),)), 48))
    assert matches(["a red circle", red_circle]) == [True]
    assert matches(["a large red circle at the top", red_circle]) == [True]  # sizes and places are not checked
    assert matches(["two red circles", red_circle]) == [False]
    assert matches(["a blue circle", red_circle, "a red circle", red_circle]) == [False, True]
    assert matches(["a circle", red_circle]) == []  # no colored shape named: nothing to check
    assert matches([red_circle, "a red circle"]) == []
    written = save_parts(["a red circle", red_circle], tmp_path / "s.md")
    assert [p.name for p in written] == ["s.md", "s-1.png"]
