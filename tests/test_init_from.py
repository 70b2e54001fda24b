"""`train/pretrain.py --init-from`: a pretrained Hugging Face LM, extended, trained and served.

The "pretrained" LMs are tiny random Llama, Qwen2 and Mistral models with a byte-level BPE
tokenizer trained here on Shapes texts, saved as Hugging Face directories like any hub download.
Every expectation is computed independently: from the original model loaded by plain
`transformers`, from the tokenizer loaded by `AutoTokenizer`, or by hand.
"""

import json
import shutil
import subprocess
import sys

import PIL.Image
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import ugen
from conftest import TINY_DATA, run_script
from ugen.model import extend_pretrained_lm, lm_vocab
from ugen.sampling import Engine, SamplingParams
from ugen.shapes import make_examples
from ugen.text_tokenizer import load_text_tokenizer
from ugen.vocab import SPECIALS, Vocab

LM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # the LM's own: ugen must never emit them
PADDING_ROWS = 13  # Qwen2 pads its embedding rows past the tokenizer; the tiny Qwen2 does too
# family: (config class, model class, extra embedding rows, tied input/output embeddings)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, 0, False),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, PADDING_ROWS, True),
    "mistral": (MistralConfig, MistralForCausalLM, 0, False),
}


def train_bpe(directory) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as GPT-2, Llama 3 and Qwen2 use) trained on Shapes texts."""
    texts = [t for e in make_examples("train", 60) for t in (e.caption, e.passage, *e.prompts, *(x for qa in e.qa for x in qa[:2]))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=LM_SPECIALS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=LM_SPECIALS[0], pad_token=LM_SPECIALS[0],
                                        additional_special_tokens=LM_SPECIALS[1:])
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory) -> dict:
    """family -> a saved tiny random LM with the BPE tokenizer beside it."""
    dirs = {}
    for family, (config_class, model_class, padding, tied) in FAMILIES.items():
        directory = tmp_path_factory.mktemp(family)
        tokenizer = train_bpe(directory)
        config = config_class(vocab_size=len(tokenizer) + padding, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              tie_word_embeddings=tied, initializer_range=0.5)  # wide init: rows and logits far apart
        torch.manual_seed(0)
        model_class(config).save_pretrained(directory)
        dirs[family] = directory
    return dirs


def never_emitted(directory) -> set[int]:
    """By hand: the LM's special tokens and its embedding rows that no tokenizer id reaches."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = AutoModelForCausalLM.from_pretrained(directory).config.vocab_size
    return set(tokenizer.convert_tokens_to_ids(LM_SPECIALS)) | set(range(len(tokenizer), rows))


def test_text_first_layout_ids():
    v = Vocab(num_text=10, num_image=4, text_first=True, never_emitted=(0, 9))
    # text 0..9, then the eleven specials 10..20, then the image codes 21..24
    assert (v.pad, v.bos, v.eos, v.boi, v.eoi, v.img_mask, v.caption, v.answer, v.gen, v.plan, v.eol) == tuple(range(10, 21))
    assert v.special("<boi>") == 13 and len(SPECIALS) == 11
    assert (v.text_start, v.text_end, v.image_start, v.size) == (0, 10, 21, 25)
    assert v.from_text([0, 3, 9]) == [0, 3, 9]
    assert v.to_text([11, 3, 12, 21, 9, 24]) == [3, 9]
    assert v.from_codes([0, 3]) == [21, 24] and v.to_codes([13, 21, 24, 14]) == [0, 3]
    ids = torch.arange(25)
    assert v.is_text(ids).tolist() == [True] * 10 + [False] * 15
    assert v.is_image(ids).tolist() == [False] * 21 + [True] * 4
    assert Vocab.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    # a ugen.json from before the layout existed (nine specials then) reads as the specials-first layout
    old = Vocab.from_dict({"num_text": 10, "num_image": 4, "specials": list(SPECIALS[:9])})
    assert (old.pad, old.gen, old.text_start, old.text_end, old.image_start) == (0, 8, 9, 19, 19)
    assert old.to_text([0, 9, 18, 19]) == [0, 9] and not old.text_first and old.never_emitted == ()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_extension_keeps_the_lm_and_starts_new_rows_at_the_mean(family, lm_dirs):
    directory = lm_dirs[family]
    original = AutoModelForCausalLM.from_pretrained(directory).eval()
    rows = original.config.vocab_size
    text = load_text_tokenizer(directory)
    vocab = lm_vocab(directory, text, num_image=16, max_len=64)
    assert (vocab.num_text, vocab.bos, vocab.image_start, vocab.size) == (rows, rows + 1, rows + 11, rows + 11 + 16)
    assert set(vocab.never_emitted) == never_emitted(directory)

    extended = extend_pretrained_lm(directory, vocab, torch.device("cpu")).eval()
    assert type(extended) is type(original)
    ids = torch.tensor([AutoTokenizer.from_pretrained(directory).encode("a small red circle above a large blue square")])
    with torch.no_grad():
        ours, theirs = extended(input_ids=ids).logits, original(input_ids=ids).logits  # (1, T, V'), (1, T, V)
    assert ours.shape[-1] == vocab.size
    # the same up to float rounding: the BLAS may tile a wider output layer's product differently
    torch.testing.assert_close(ours[..., :rows], theirs, rtol=0, atol=1e-6)

    pairs = [(extended.get_input_embeddings(), original.get_input_embeddings()),
             (extended.get_output_embeddings(), original.get_output_embeddings())]
    for new, old in pairs:
        assert torch.equal(new.weight[:rows], old.weight)
        torch.testing.assert_close(new.weight[rows:], old.weight.mean(dim=0).expand(vocab.size - rows, -1))
    tied = FAMILIES[family][3]
    assert (pairs[0][0].weight.data_ptr() == pairs[1][0].weight.data_ptr()) == tied
    assert (extended.config.pad_token_id, extended.config.bos_token_id, extended.config.eos_token_id) == (vocab.pad, vocab.bos, vocab.eos)


def test_sampling_never_draws_the_lm_specials(lm_dirs):
    """Even when they are the likeliest ids by far: the engine masks them out of text."""
    directory = lm_dirs["qwen2"]
    vocab = lm_vocab(directory, load_text_tokenizer(directory), num_image=16, max_len=64)
    model = extend_pretrained_lm(directory, vocab, torch.device("cpu")).eval()
    blocked = sorted(never_emitted(directory))
    boost = torch.zeros(vocab.size)
    boost[blocked] = 1e4
    model.get_output_embeddings().register_forward_hook(lambda module, inputs, logits: logits + boost)
    prompt = [vocab.bos, 40, 41]
    with torch.no_grad():
        assert int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax()) in blocked  # the test can fail
    engine = Engine(model, vocab, grid=2)
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.0)):
        out = engine.generate([prompt] * 3, max_new_tokens=8, params=params, generator=torch.Generator().manual_seed(0))
        drawn = {t for row in out for t in row}
        assert drawn and not drawn & set(blocked)
        assert all(t < vocab.text_end or t == vocab.eos for t in drawn)


def test_bad_init_from_is_one_line(lm_dirs, tiny_run, tmp_path):
    common = ["--run-dir", str(tmp_path), "--vq", str(tiny_run / "vq"), *TINY_DATA, "--wandb", "disabled"]
    long = run_script("train/pretrain.py", *common, "--init-from", str(lm_dirs["llama"]), "--max-len", "512", check=False)
    assert long.returncode == 2 and "--max-len 512" in long.stderr and "256 positions" in long.stderr
    assert len(long.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_script("train/pretrain.py", *common, "--init-from", str(empty), "--text-tokenizer",
                         str(tiny_run / "text" / "text.model"), check=False)
    assert missing.returncode == 2 and "no config.json" in missing.stderr and "Traceback" not in missing.stderr


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def trained(request, lm_dirs, tiny_run, tmp_path_factory):
    """(family, the LM's directory, the model directory of a few --init-from pretraining steps)."""
    run = tmp_path_factory.mktemp(f"init-{request.param}")
    run_script("train/pretrain.py", "--run-dir", str(run), "--init-from", str(lm_dirs[request.param]), "--vq", str(tiny_run / "vq"),
               "--steps", "4", "--batch-tokens", "256", "--warmup", "1", "--text-only-steps", "1", "--eval-every", "2",
               "--checkpoint-every", "2", *TINY_DATA, "--wandb", "disabled")
    return request.param, lm_dirs[request.param], run / "model"


def test_result_loads_with_plain_transformers(trained):
    family, lm_dir, model_dir = trained
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert type(plain) is FAMILIES[family][1]
    model = ugen.load(model_dir, device="cpu")
    ids = torch.randint(0, model.vocab.size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.model(input_ids=ids).logits, plain(input_ids=ids).logits)
    meta = json.loads((model_dir / "ugen.json").read_text())
    assert meta["pretrain"]["init_from"] == str(lm_dir) and meta["text_tokenizer"] == "text"
    assert AutoTokenizer.from_pretrained(model_dir / "text").get_vocab() == AutoTokenizer.from_pretrained(lm_dir).get_vocab()
    original = AutoModelForCausalLM.from_pretrained(lm_dir)
    rows = original.config.vocab_size
    assert model.vocab.text_first and model.vocab.num_text == rows
    assert not torch.equal(plain.get_input_embeddings().weight[:rows], original.get_input_embeddings().weight)  # trained


def test_result_captions_and_draws_within_its_modalities(trained):
    family, lm_dir, model_dir = trained
    model = ugen.load(model_dir, device="cpu")
    vocab, blocked = model.vocab, never_emitted(lm_dir)
    examples = make_examples("test", 2)
    captions = model.caption([e.image for e in examples])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    codes = model.image_codes([e.image for e in examples])
    _, rows = model.draw_captions(codes, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0), max_new_tokens=24)
    for row in rows:
        text_part = row[:-1] if row[-1] == vocab.eos else row
        assert all(0 <= t < vocab.num_text and t not in blocked for t in text_part), row
    prompt = AutoTokenizer.from_pretrained(lm_dir).encode("a red circle")
    _, rows, drawn = model.draw_codes([prompt] * 2, SamplingParams(temperature=1.0, cfg=2.0), torch.Generator().manual_seed(0))
    for row in rows:
        assert all(t >= vocab.image_start for t in row[:-1]) and row[-1] == vocab.eoi and len(row) == model.image_len + 1
    assert drawn.shape == (2, model.image_len) and drawn.max() < vocab.num_image
    images = model.generate("a red circle", num=2, seed=1)
    assert [i.size for i in images] == [(model.image_size, model.image_size)] * 2


@pytest.mark.slow
def test_rl_eval_and_the_cli_work_on_it(trained, tmp_path):
    _, lm_dir, model_dir = trained
    out = tmp_path / "model-rl"
    run_script("train/rl.py", "--model", str(model_dir), "--out", str(out), "--steps", "2", "--images-per-step", "2",
               "--group-size", "2", "--probe-images", "2", "--checkpoint-every", "1", *TINY_DATA, "--wandb", "disabled")
    model = ugen.load(out, device="cpu")
    assert model.meta["text_tokenizer"] == "text" and model.vocab == ugen.load(model_dir, device="cpu").vocab
    assert type(model.model) is type(AutoModelForCausalLM.from_pretrained(lm_dir))
    image = tmp_path / "scene.png"
    PIL.Image.fromarray(make_examples("test", 1)[0].image).save(image)
    result = subprocess.run([sys.executable, "-c", "from ugen.cli import entry; entry()", "caption", "--model", str(out), str(image)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr  # an untrained caption may hold a newline
    run_script("eval/evaluate.py", "--model", str(out), "--num-test", "20", "--images-per-prompt", "1",
               "--prompts-per-task", "2", "--num-reconstruct", "8", "--out", str(tmp_path / "eval"))
    assert "summary" in json.loads((tmp_path / "eval" / "results.json").read_text())["results"]


def test_a_text_only_ugen_model_starts_a_run_with_its_image_rows_reset(tiny_model_dir, tmp_path):
    """--init-from a ugen model trained on text alone: its weights as saved, each image row at the
    mean of the text rows; a model that trained on images is refused."""
    from ugen.errors import UserError
    from ugen.model import text_lm_of_model_dir

    text = load_text_tokenizer(tiny_model_dir)  # a ugen model directory holds its text.model
    with pytest.raises(UserError, match="trained on images too"):
        text_lm_of_model_dir(tiny_model_dir, text, 1000, 64, torch.device("cpu"))
    text_lm = tmp_path / "text-lm"
    shutil.copytree(tiny_model_dir, text_lm)
    meta = json.loads((text_lm / "ugen.json").read_text())
    meta["pretrain"]["mix"] = {"text": 1.0, "text_qa": 1.0, "caption": 0.0}
    (text_lm / "ugen.json").write_text(json.dumps(meta))
    vocab = Vocab.from_dict(meta["vocab"])
    with pytest.raises(UserError, match="image ids, the VQ tokenizer"):
        text_lm_of_model_dir(text_lm, text, vocab.num_image + 1, 64, torch.device("cpu"))

    got_vocab, model = text_lm_of_model_dir(text_lm, text, vocab.num_image, meta["max_len"], torch.device("cpu"))
    saved = AutoModelForCausalLM.from_pretrained(text_lm, dtype=torch.float32)
    assert got_vocab == vocab
    for ours, theirs in [(model.get_input_embeddings().weight, saved.get_input_embeddings().weight),
                         (model.get_output_embeddings().weight, saved.get_output_embeddings().weight)]:
        assert torch.equal(ours[: vocab.image_start], theirs[: vocab.image_start])  # specials and text as trained
        mean = theirs[vocab.text_start : vocab.text_end].double().mean(0).float()
        torch.testing.assert_close(ours[vocab.image_start :], mean.expand(vocab.num_image, -1))
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, saved.model.layers[0].mlp.up_proj.weight)
