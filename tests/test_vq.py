"""VQ tokenizer: decode(encode(x)) is the model's own reconstruction, saves round-trip, the script runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_script
from ugen.errors import UserError
from ugen.image_tokenizers import UgenVQ, VQConfig, encode_images, to_tensor, to_uint8

QUANTIZERS = {
    "fsq": dict(quantizer="fsq", levels=[8, 5, 5, 5]),
    "vq": dict(quantizer="vq", codebook_size=64, codebook_dim=8),
}


def _tokenizer(name: str, image_size: int = 48, downsample: int = 8) -> UgenVQ:
    """A tiny tokenizer after one training-mode pass (VQ initialises its codebook by k-means there)."""
    torch.manual_seed(0)
    channels = [8, 8, 16, 16][: {8: 3, 16: 4}[downsample]]
    model = UgenVQ(VQConfig(image_size=image_size, downsample=downsample, channels=channels, **QUANTIZERS[name]))
    model.train()
    model(torch.rand(16, 3, image_size, image_size) * 2 - 1)
    return model.eval()


@pytest.mark.parametrize("name", QUANTIZERS)
@pytest.mark.parametrize("image_size, downsample", [(48, 8), (32, 8), (64, 16)])
def test_decode_of_encode_is_the_reconstruction(name, image_size, downsample):
    model = _tokenizer(name, image_size, downsample)
    images = torch.rand(5, 3, image_size, image_size) * 2 - 1
    recon, codes, aux_loss = model(images)
    grid = image_size // downsample
    assert model.grid == grid and codes.shape == (5, grid * grid) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < model.num_codes
    assert torch.equal(model.encode(images), codes)
    assert torch.allclose(model.decode(codes), recon, atol=1e-6)
    assert recon.shape == images.shape and recon.abs().max() <= 1
    assert aux_loss.ndim == 0


def test_downsampling_factor_sets_the_grid_and_the_widths():
    shapes = UgenVQ(VQConfig())  # the Shapes default: 48 px, factor 8
    assert shapes.grid == 6 and shapes.config.channels == [16, 32, 64]
    llamagen = UgenVQ(VQConfig(image_size=256, downsample=16))  # LlamaGen's 16x16 codes of a 256 px image
    assert llamagen.grid == 16 and llamagen.config.channels == [16, 32, 64, 128]
    strides = [m.stride[0] for m in llamagen.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.stride[0] > 1]
    assert 2 * 2 ** len(strides) == 16  # space-to-depth by 2, then one stride-2 stage per further factor of 2
    with torch.no_grad():
        latent = llamagen.encoder(torch.zeros(1, 3, 256, 256))
    assert latent.shape[-2:] == (16, 16)


def _latents(encoder: str, images: torch.Tensor) -> torch.Tensor:
    """The encoder's output per code, (B, g, g, D), of a random-weight tokenizer."""
    torch.manual_seed(0)
    model = UgenVQ(VQConfig(channels=[8, 16, 16], encoder=encoder)).eval()
    with torch.no_grad():
        return model.encoder(images).permute(0, 2, 3, 1)


def test_cell_encoder_sees_only_its_own_cell():
    # One random 8x8 cell tiled 6x6 times: every code of the cell encoder sees the same pixels, so
    # every latent is the same; the wide encoder's border codes see the zero padding, so they differ.
    cell = torch.rand(3, 8, 8) * 2 - 1
    tiled = cell.repeat(1, 6, 6)[None]
    for encoder, equal in ("cell", True), ("wide", False):
        latents = _latents(encoder, tiled).reshape(36, -1)
        assert torch.allclose(latents, latents[:1].expand_as(latents), atol=1e-5) is equal, encoder
    # Repaint the pixels of code (2, 3) alone: only that code's latent moves under the cell encoder,
    # its neighbours' too under the wide one.
    images = torch.rand(1, 3, 48, 48) * 2 - 1
    changed = images.clone()
    changed[..., 16:24, 24:32] = torch.rand(3, 8, 8) * 2 - 1
    def moved(encoder: str) -> set[tuple[int, int]]:
        shift = (_latents(encoder, images) - _latents(encoder, changed)).abs().amax(-1)[0]
        return {tuple(i) for i in (shift > 1e-6).nonzero().tolist()}

    assert moved("cell") == {(2, 3)}
    assert moved("wide") >= {(r, c) for r in (1, 2, 3) for c in (2, 3, 4)}


@pytest.mark.parametrize("name", QUANTIZERS)
def test_code_patches_are_each_code_decoded_alone(name):
    # A second path: the public decode of a whole grid filled with one code; its centre cell is the
    # code's patch (the grid is 6 codes wide, under the 7-code block code_patches decodes).
    model = _tokenizer(name)
    patches = torch.cat(list(model.code_patches(chunk=7)))  # chunks that do not divide the codebook
    assert patches.shape == (model.num_codes, 3 * 8 * 8)
    for code in (0, 5, model.num_codes - 1):
        image = model.decode(torch.full((1, 36), code))[0]  # (3, 48, 48)
        assert torch.allclose(patches[code], image[:, 24:32, 24:32].flatten(), atol=1e-6)


def test_num_codes():
    assert UgenVQ(VQConfig()).num_codes == 1000
    assert UgenVQ(VQConfig(quantizer="vq", codebook_size=300)).num_codes == 300


@pytest.mark.parametrize("name", QUANTIZERS)
def test_save_load_round_trip(name, tmp_path):
    model = _tokenizer(name)
    model.save(tmp_path / "vq")
    loaded = UgenVQ.load(tmp_path / "vq")
    assert not loaded.training and loaded.config == model.config
    images = torch.rand(6, 3, 48, 48) * 2 - 1
    codes = model.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    config = json.loads((tmp_path / "vq" / "vq.json").read_text())
    del config["downsample"]  # a tokenizer saved before the factor was a setting: it was 8
    (tmp_path / "vq" / "vq.json").write_text(json.dumps(config))
    assert torch.equal(UgenVQ.load(tmp_path / "vq").encode(images), codes)


def test_encode_does_not_train_the_codebook():
    model = _tokenizer("vq").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(torch.rand(8, 3, 48, 48) * 2 - 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_missing_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="vq.json is missing"):
        UgenVQ.load(tmp_path)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="multiple of 8"):
        VQConfig(image_size=50)
    with pytest.raises(UserError, match="multiple of 16"):
        VQConfig(image_size=72, downsample=16)
    with pytest.raises(UserError, match="downsample must be one of"):
        VQConfig(downsample=12)
    with pytest.raises(UserError, match="4 positive widths"):
        VQConfig(image_size=64, downsample=16, channels=[16, 32, 64])
    with pytest.raises(UserError, match="quantizer"):
        VQConfig(quantizer="rvq")
    with pytest.raises(UserError, match="encoder must be one of"):
        VQConfig(encoder="global")


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
    assert UgenVQ.load(out).grid == 6


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
                        "--wandb", "disabled", "--precision", "bf16")  # the learned codebook under autocast
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_rows"] == 1 and "parser_object_accuracy" not in metrics
    assert "skipped 1 rows (empty text or unreadable image)" in result.stdout
    loaded = UgenVQ.load(out)
    assert loaded.grid == 4 and all(t.dtype == torch.float32 for t in loaded.state_dict().values() if t.is_floating_point())


def test_train_script_missing_data_is_one_line(tmp_path):
    result = run_script("tokenizers/train_vq.py", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                        check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing" in result.stderr
    assert not (tmp_path / "o").exists()
