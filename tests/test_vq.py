"""VQ tokenizer: decode(encode(x)) is the model's own reconstruction, saves round-trip, the script runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_script
from ugen.errors import UserError
from ugen.vq import ImageTokenizer, VQConfig, encode_images, to_tensor, to_uint8

QUANTIZERS = {
    "fsq": dict(quantizer="fsq", levels=[8, 5, 5, 5]),
    "vq": dict(quantizer="vq", codebook_size=64, codebook_dim=8),
}


def _tokenizer(name: str, image_size: int = 48) -> ImageTokenizer:
    """A tiny tokenizer after one training-mode pass (VQ initialises its codebook by k-means there)."""
    torch.manual_seed(0)
    model = ImageTokenizer(VQConfig(image_size=image_size, channels=[8, 8, 16], **QUANTIZERS[name]))
    model.train()
    model(torch.rand(16, 3, image_size, image_size) * 2 - 1)
    return model.eval()


@pytest.mark.parametrize("name", QUANTIZERS)
@pytest.mark.parametrize("image_size", [48, 32])
def test_decode_of_encode_is_the_reconstruction(name, image_size):
    model = _tokenizer(name, image_size)
    images = torch.rand(5, 3, image_size, image_size) * 2 - 1
    recon, codes, aux_loss = model(images)
    grid = image_size // 8
    assert model.grid == grid and codes.shape == (5, grid * grid) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < model.num_codes
    assert torch.equal(model.encode(images), codes)
    assert torch.allclose(model.decode(codes), recon, atol=1e-6)
    assert recon.shape == images.shape and recon.abs().max() <= 1
    assert aux_loss.ndim == 0


def test_num_codes():
    assert ImageTokenizer(VQConfig()).num_codes == 1000
    assert ImageTokenizer(VQConfig(quantizer="vq", codebook_size=300)).num_codes == 300


@pytest.mark.parametrize("name", QUANTIZERS)
def test_save_load_round_trip(name, tmp_path):
    model = _tokenizer(name)
    model.save(tmp_path / "vq")
    loaded = ImageTokenizer.load(tmp_path / "vq")
    assert not loaded.training and loaded.config == model.config
    images = torch.rand(6, 3, 48, 48) * 2 - 1
    codes = model.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_encode_does_not_train_the_codebook():
    model = _tokenizer("vq").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(torch.rand(8, 3, 48, 48) * 2 - 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_missing_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="vq.json is missing"):
        ImageTokenizer.load(tmp_path)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="multiple of 8"):
        VQConfig(image_size=50)
    with pytest.raises(UserError, match="quantizer"):
        VQConfig(quantizer="rvq")


def test_pixel_conversions_and_encode_images():
    pixels = np.random.default_rng(0).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)
    tensor = to_tensor(pixels)
    assert tensor.shape == (7, 3, 48, 48) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(to_uint8(tensor), pixels)
    model = _tokenizer("fsq")
    codes = encode_images(model, pixels, batch_size=3)
    assert codes.shape == (7, 36) and codes.dtype == np.int16
    assert np.array_equal(codes, model.encode(tensor).numpy())


def test_train_script_writes_tokenizer_and_metrics(tmp_path):
    out = tmp_path / "vq"
    result = run_script("tokenizers/train_vq.py", "--out", str(out), "--steps", "4", "--batch-size", "8",
                        "--num-train", "32", "--num-val", "8", "--wandb", "disabled")
    for name in ("vq.safetensors", "vq.json", "metrics.json"):
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr_db", "ssim", "codebook_usage", "parser_object_accuracy", "parser_image_exact", "train_seconds"):
        assert key in metrics
    assert metrics["steps"] == 4
    assert "parser reads" in result.stdout.strip().splitlines()[-1]
    assert ImageTokenizer.load(out).grid == 6


def test_train_script_on_own_data(tmp_path):
    rows = []
    for i in range(40):  # 5% of rows are held out for validation: 40 rows leave it one
        rgb = np.random.default_rng(i).integers(0, 256, (20, 28, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
        rows.append({"picture": f"{i}.png", "words": f"noise {i}" if i else ""})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "vq"
    result = run_script("tokenizers/train_vq.py", "--data", str(tmp_path / "rows.jsonl"), "--image-column",
                        "picture", "--text-column", "words", "--image-size", "32", "--steps", "2",
                        "--batch-size", "4", "--quantizer", "vq", "--codebook-size", "32", "--out", str(out),
                        "--wandb", "disabled")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_rows"] == 1 and "parser_object_accuracy" not in metrics
    assert "skipped 1 train and 0 validation rows" in result.stdout
    assert ImageTokenizer.load(out).grid == 4


def test_train_script_missing_data_is_one_line(tmp_path):
    result = run_script("tokenizers/train_vq.py", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                        check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing" in result.stderr
    assert not (tmp_path / "o").exists()
