"""Plan, then draw: a model pretrained with --plan writes the scene's layout as text after the
prompt, then draws the image from prompt and plan; the plan is shown to the user."""

import json

import torch
from PIL import Image

from conftest import run_script, ugen_cli
from ugen.api import GENERATE_DEFAULTS, PLAN_TOKENS, load
from ugen.model import read_meta
from ugen.sampling import SamplingParams
from ugen.sequences import plan_prompt


def test_a_planning_model_writes_its_plan_then_draws_from_it(tiny_model_dir):
    """Shapes has layouts, so pretraining plans by default."""
    model = load(tiny_model_dir)
    assert model.plans and read_meta(tiny_model_dir)["plan"] is True
    caption = model.text_ids("two red circles", "prompt")
    prompts, rows, codes = model.draw_codes([caption] * 3, GENERATE_DEFAULTS, torch.Generator().manual_seed(5))
    assert codes.shape == (3, model.image_len)
    # The plan is what the engine draws after <plan> from the same generator (the images' noise comes
    # after), as long as the row leaves room for: <boi>, the image's span and <eoi> must still fit.
    v = model.vocab
    room = min(PLAN_TOKENS, model.max_len - model.span_len - 2 - len(plan_prompt(v, caption)))
    expected = model.engine.generate([plan_prompt(v, caption)] * 3, params=SamplingParams(GENERATE_DEFAULTS.plan_temperature),
                                     allow_images=True, stop_ids=(v.boi, v.eos), generator=torch.Generator().manual_seed(5),
                                     max_new_tokens=room)
    for prompt, drawn in zip(prompts, expected):
        plan = v.to_text(drawn)
        assert prompt == [*plan_prompt(v, caption), *v.from_text(plan), v.boi]
        assert model.plan_of(prompt) == model.decode_text(v.from_text(plan))

    images, plans = model.generate_with_plans("two red circles", 3, GENERATE_DEFAULTS, seed=5)
    assert plans == [model.plan_of(p) for p in prompts] and len(images) == 3
    assert [i.tobytes() for i in images] == [i.tobytes() for i in model.generate("two red circles", 3, seed=5)]


def test_a_model_without_plans_draws_as_before_here_with_row_ends(tiny_unplanned_model_dir):
    model = load(tiny_unplanned_model_dir)
    assert not model.plans and model.vocab.row_length == model.image_tokenizer.grid
    prompts, rows, codes = model.draw_codes([model.text_ids("a red circle", "prompt")] * 2, GENERATE_DEFAULTS,
                                            torch.Generator())
    assert prompts[0][-1] == model.vocab.boi and model.plan_of(prompts[0]) is None
    grid, eol = model.image_tokenizer.grid, model.vocab.special("<eol>")
    for row, image in zip(rows, codes):  # each row of codes, then <eol>; the codes are the image's
        assert row == [*model.vocab.image_span(image), model.vocab.eoi] and row[grid] == eol
    assert model.generate_with_plans("a red circle", 2)[1] == [None, None]


def test_generate_shows_the_plan(tiny_model_dir, tmp_path):
    result = ugen_cli("generate", "--model", str(tiny_model_dir), "--prompt", "a blue square", "--out",
                      str(tmp_path / "x.png"), "--num", "2", "--seed", "3", "--show-plan")
    assert result.returncode == 0, result.stderr
    expected = load(tiny_model_dir).generate_with_plans("a blue square", 2, seed=3)[1]
    lines = result.stdout.splitlines()
    assert [line.split("\t") for line in lines] == [[str(tmp_path / f"x-{i}.png"), plan] for i, plan in ((1, expected[0]), (2, expected[1]))]


def test_plan_trains_on_a_data_set_with_a_layout_column_and_needs_one(tmp_path):
    """Your own data plans from its --layout-column (rows without one draw as before); without a
    layout column --plan is a one-line error."""
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for i in range(40):
        Image.new("RGB", (16, 16), (i * 6, 0, 0)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"picture {i}", "layout": f"red square {i % 4} {i % 3}" if i % 5 else ""})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    data = ["--data", str(folder), "--image-size", "16"]
    run_script("tokenizers/train_vq.py", "--out", str(run / "vq"), *data, "--downsample", "4", "--steps", "2",
               "--batch-size", "4", "--wandb", "disabled")
    run_script("tokenizers/train_text.py", "--out", str(run / "text"), *data)
    train = ["train/pretrain.py", "--run-dir", str(run), *data, "--plan", "--steps", "4", "--text-only-steps", "1",
             "--batch-tokens", "256", "--wandb", "disabled"]
    done = run_script(*train, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --plan:")

    run_script(*train, "--layout-column", "layout", "--overwrite")
    model = load(run / "model")
    assert model.plans and read_meta(run / "model")["pretrain"]["layout_column"] == "layout"
    images, plans = model.generate_with_plans("picture 3", 2, seed=0)
    assert len(images) == 2 and all(isinstance(p, str) for p in plans)


def test_a_tokenizer_that_cannot_train_is_one_line(tmp_path):
    """SentencePiece refuses fewer pieces than the text has distinct characters: one line, exit 2."""
    done = run_script("tokenizers/train_text.py", "--out", str(tmp_path / "text"), "--num-train", "50", "--vocab-size", "262",
                      check=False)
    assert done.returncode == 2 and "SentencePiece cannot train" in done.stderr.strip().splitlines()[-1]
