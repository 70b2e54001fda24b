"""The ugen command: outputs per the usage line, and bad input as one line with exit code 2."""


import pytest
from PIL import Image

from conftest import run_in_process, ugen_cli
from ugen.cli import main
from ugen.shapes import make_examples


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, example in enumerate(make_examples("test", 2)):
        path = folder / f"scene{i}.{'png' if i == 0 else 'jpg'}"
        Image.fromarray(example.image).save(path)
        paths.append(path)
    return paths


def test_caption_prints_one_line_per_image(tiny_model_dir, images):
    result = ugen_cli("caption", "--model", str(tiny_model_dir), *map(str, images))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(images)


def test_generate_writes_numbered_files(tiny_model_dir, tmp_path):
    out = tmp_path / "draw.png"
    result = ugen_cli("generate", "--model", str(tiny_model_dir), "--prompt", "a blue square", "--out", str(out),
                      "--num", "3", "--seed", "1", "--upscale", "2")
    assert result.returncode == 0, result.stderr
    for i in (1, 2, 3):
        with Image.open(tmp_path / f"draw-{i}.png") as image:
            assert image.size == (96, 96)
    single = ugen_cli("generate", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--out", str(out))
    assert single.returncode == 0 and out.is_file()


def test_ask_and_text(tiny_model_dir, images):
    ask = ugen_cli("ask", "--model", str(tiny_model_dir), "--image", str(images[0]), "--question", "how many objects are there?")
    assert ask.returncode == 0 and len(ask.stdout.splitlines()) == 1
    text = ugen_cli("text", "--model", str(tiny_model_dir), "--prompt", "a red circle")
    assert text.returncode == 0 and text.stdout.startswith("a red circle")


def test_bad_input_is_one_line_and_exit_code_2(tiny_model_dir, images, tmp_path, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    cases = [
        ("caption", "--model", str(tiny_model_dir), str(tmp_path / "missing.png")),
        ("caption", "--model", str(tiny_model_dir), str(not_image)),
        ("ask", "--model", str(tiny_model_dir), "--image", str(images[0]), "--question", "  "),
        ("generate", "--model", str(tiny_model_dir), "--prompt", "", "--out", str(tmp_path / "x.png")),
        ("text", "--model", str(tiny_model_dir), "--prompt", " "),
        ("caption", "--model", str(tmp_path), str(images[0])),  # a directory that is not a model
        ("caption", "--model", str(tmp_path / "nowhere"), str(images[0])),
        ("generate", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--out", str(tmp_path / "x.png"), "--num", "0"),
        ("text", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--images"),  # no --out
        ("text", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--images", "--out", str(tmp_path / "x.png")),
        ("text", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--images", "--out", str(tmp_path / "no" / "x.md")),
        ("text", "--model", str(tiny_model_dir), "--prompt", "a red circle", "--max-new-tokens", "0"),
        ("serve", "--model", str(tiny_model_dir), "--port", "0"),
        ("serve", "--model", str(tiny_model_dir), "--max-rows", "0"),
        ("serve", "--model", str(tmp_path)),  # not a model
        ("text", "--model", str(tiny_model_dir), "--prompt", "a red circle " * 100, "--images", "--out", str(tmp_path / "x.md")),
    ]
    for args in cases:
        result = run_in_process(capsys, main, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, (args, result.stderr)
