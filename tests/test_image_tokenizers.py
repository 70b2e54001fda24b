"""Pretrained image tokenizers behind ugen's one interface (`ugen.image_tokenizers`): tiny random
configs of each class, checked against the library's own encode and decode (or, for Janus, against
the l2-normalised lookup its checkpoints mean), and end to end: pretraining on Shapes at 64 px,
captioning, drawing, and the model directory loading after the tokenizer's source is deleted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY_DATA, run_script
from diffusers import VQModel
from transformers import ChameleonVQVAE, ChameleonVQVAEConfig, Emu3VQVAE, Emu3VQVAEConfig, JanusVQVAE, JanusVQVAEConfig

from ugen.errors import UserError
from ugen.image_tokenizers import ADAPTER_FILE, code_dtype, encode_images, load_image_tokenizer, to_tensor
from ugen.model import build_model, init_image_rows_from_pixels
from ugen.vocab import Vocab

SIZE = 64


def tiny_janus() -> JanusVQVAE:
    """Factor 8 (three halvings), a fixed 8 x 8 grid: 64 px."""
    torch.manual_seed(0)
    net = JanusVQVAE(JanusVQVAEConfig(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                                      channel_multiplier=[1, 1, 2, 2], num_res_blocks=1, num_patches=SIZE // 8))
    with torch.no_grad():  # entries of unequal norms, as trained codebooks have: the raw and the cosine lookups then differ
        net.quantize.embedding.weight.mul_(torch.logspace(-1, 1, 64)[:, None])
    return net


def tiny_emu3(codes: int = 40_000) -> Emu3VQVAE:
    """Factor 4, any size, by default 40,000 codes: past int16, as Cosmos' and IBQ's books are."""
    torch.manual_seed(0)
    return Emu3VQVAE(Emu3VQVAEConfig(codebook_size=codes, embed_dim=4, latent_channels=4, base_channels=32, hidden_size=64,
                                     channel_multiplier=[1, 2, 2], num_res_blocks=1, attn_resolutions=[],
                                     temporal_downsample_factor=2))


def tiny_vqmodel(lookup_from_codebook: bool = False) -> VQModel:
    """Factor 4, any size, 48 codes."""
    torch.manual_seed(0)
    blocks = 3
    return VQModel(block_out_channels=(32,) * blocks, down_block_types=("DownEncoderBlock2D",) * blocks,
                   up_block_types=("UpDecoderBlock2D",) * blocks, latent_channels=4, num_vq_embeddings=48,
                   norm_num_groups=8, layers_per_block=1, lookup_from_codebook=lookup_from_codebook)


NETS = {"janus": tiny_janus, "emu3": tiny_emu3, "diffusers-vq": tiny_vqmodel}


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] (blurred noise: more like pictures than white noise)."""
    noise = torch.rand(n, 3, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.interpolate(noise, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


@pytest.fixture(params=list(NETS))
def saved(request, tmp_path):
    """(kind, the random net, its save_pretrained directory)."""
    net = NETS[request.param]().eval()
    net.save_pretrained(tmp_path / request.param)
    return request.param, net, tmp_path / request.param


def test_codes_and_pixels_are_what_the_library_means(saved):
    kind, net, directory = saved
    tokenizer = load_image_tokenizer(directory, image_size=SIZE)
    assert tokenizer.kind == kind and tokenizer.image_size == SIZE
    x = images()
    codes = tokenizer.encode(x)
    grid = tokenizer.grid
    assert codes.shape == (3, grid * grid) and codes.dtype == torch.long
    with torch.no_grad():
        if kind == "janus":
            # LlamaGen's lookup, by hand: the most similar entry by cosine
            latent = net.quant_conv(net.encoder(x)).permute(0, 2, 3, 1).reshape(-1, 8)  # (B*g*g, D)
            reference = F.normalize(latent, dim=1) @ F.normalize(net.quantize.embedding.weight, dim=1).T
            assert torch.equal(codes.flatten(), reference.argmax(1))
            # transformers' encode takes the nearest raw entry: other codes, which this checkpoint does not mean
            assert not torch.equal(codes, net.encode(x).image_tokens.view(3, -1))
            library_pixels = net.decode(codes)
        elif kind == "emu3":
            own = net.encode(x, image_sizes=torch.tensor([[SIZE, SIZE]] * 3)).image_tokens
            assert torch.equal(codes, torch.stack(own).flatten(1))
            library_pixels = net.decode(codes.view(3, grid, grid))
        else:
            latents = net.encode(x).latents
            own = net.quantize(latents)[2][2].view(3, -1)  # VQModel's quantizer's ids
            assert torch.equal(codes, own)
            library_pixels = net.decode(latents).sample  # VQModel quantizes the latent itself
    assert torch.allclose(tokenizer.decode(codes), library_pixels.clamp(-1, 1), atol=1e-4)  # straight-through rounding


def test_aMUSEd_style_codebook_lookup_decodes_the_same(tmp_path):
    # lookup_from_codebook (aMUSEd's VQModel): decode is handed ids, not latents
    plain, lookup = tiny_vqmodel(), tiny_vqmodel(lookup_from_codebook=True)
    plain.save_pretrained(tmp_path / "plain")
    lookup.save_pretrained(tmp_path / "lookup")
    codes = load_image_tokenizer(tmp_path / "plain", image_size=SIZE).encode(images())
    a = load_image_tokenizer(tmp_path / "plain", image_size=SIZE).decode(codes)
    b = load_image_tokenizer(tmp_path / "lookup", image_size=SIZE).decode(codes)
    assert torch.allclose(a, b, atol=1e-5)


def test_frozen_in_eval_mode_and_fp32_under_autocast_and_tf32(saved):
    _, _, directory = saved
    tokenizer = load_image_tokenizer(directory, image_size=SIZE)
    parent = torch.nn.Sequential(tokenizer)
    parent.train()  # a training loop's model.train() must not reach the tokenizer
    assert not any(m.training for m in tokenizer.modules())
    assert not any(p.requires_grad for p in tokenizer.parameters())
    x = images()
    plain = tokenizer.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tokenizer.encode(x), plain)
        assert tokenizer.decode(plain).dtype == torch.float32
    # TF32 (which pick_device turns on for CUDA) is off while the network runs, and back on after
    seen = []
    latent = tokenizer._latent
    tokenizer._latent = lambda pixels: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)) or latent(pixels)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        tokenizer.encode(x)
        assert seen == [(False, False)]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_saved_tokenizer_loads_without_its_source(saved, tmp_path):
    kind, _, directory = saved
    tokenizer = load_image_tokenizer(directory, image_size=SIZE)
    codes = tokenizer.encode(images())
    tokenizer.save(tmp_path / "copy")
    shutil.rmtree(directory)
    assert json.loads((tmp_path / "copy" / ADAPTER_FILE).read_text()) == {"kind": kind, "image_size": SIZE}
    again = load_image_tokenizer(tmp_path / "copy")  # the size comes from the saved adapter file
    assert again.image_size == SIZE and torch.equal(again.encode(images()), codes)


def test_codebooks_past_int16_are_cached_as_int32(tmp_path):
    tiny_emu3().save_pretrained(tmp_path / "emu3")
    tokenizer = load_image_tokenizer(tmp_path / "emu3", image_size=SIZE)
    assert tokenizer.num_codes == 40_000 and code_dtype(tokenizer.num_codes) == np.int32
    pixels = ((images(5) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    cached = encode_images(tokenizer, pixels)  # in batches of encode_batch (8 for a pretrained one)
    assert cached.dtype == np.int32
    assert np.array_equal(cached, tokenizer.encode(to_tensor(pixels)).numpy())  # one call, no batches


def test_image_rows_from_code_patches_in_chunks_equal_all_at_once():
    # what pretraining gets from a pretrained tokenizer's code_patches: chunks, never the whole book
    vocab = Vocab(num_text=40, num_image=50)
    patches = torch.rand(50, 4) @ torch.rand(4, 48)
    whole, chunked = (build_model("tiny", vocab, 64, torch.device("cpu")) for _ in range(2))
    chunked.load_state_dict(whole.state_dict())
    init_image_rows_from_pixels(whole, vocab, patches, seed=0)
    init_image_rows_from_pixels(chunked, vocab, iter(patches.split(7)), seed=0)
    for a, b in ((whole.get_input_embeddings(), chunked.get_input_embeddings()),
                 (whole.get_output_embeddings(), chunked.get_output_embeddings())):
        assert torch.allclose(a.weight, b.weight, atol=1e-5)
    with pytest.raises(ValueError, match="49 code patches for 50"):
        init_image_rows_from_pixels(chunked, vocab, iter(patches[:49].split(7)), seed=0)


def test_code_patches_cover_every_code_in_chunks(tmp_path):
    tiny_janus().save_pretrained(tmp_path / "janus")
    tokenizer = load_image_tokenizer(tmp_path / "janus")
    chunks = list(tokenizer.code_patches(chunk=30))
    assert [len(c) for c in chunks] == [30, 30, 4] and chunks[0].shape[1] == 3 * 8 * 8
    patches = torch.cat(chunks)
    # by hand from JanusVQVAE's parts: code 5's normalised entry as a 1 x 1 latent, decoded
    net = JanusVQVAE.from_pretrained(tmp_path / "janus").eval()
    with torch.no_grad():
        entry = F.normalize(net.quantize.embedding.weight[5], dim=0)[None, :, None, None]  # (1, D, 1, 1)
        alone = net.decoder(net.post_quant_conv(entry))[0].clamp(-1, 1)  # (3, 8, 8)
    assert torch.allclose(patches[5], alone.flatten(), atol=1e-4)  # a chunk of 30 rounds unlike a batch of one


def test_refusals(tmp_path):
    ChameleonVQVAE(ChameleonVQVAEConfig(embed_dim=8, num_embeddings=16, base_channels=32, channel_multiplier=[1, 2],
                                        num_res_blocks=1, latent_channels=8, resolution=32)).save_pretrained(tmp_path / "chameleon")
    with pytest.raises(UserError, match="ChameleonVQVAE has no decoder"):
        load_image_tokenizer(tmp_path / "chameleon")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an image tokenizer"):
        load_image_tokenizer(tmp_path / "empty")
    tiny_janus().save_pretrained(tmp_path / "janus")
    with pytest.raises(UserError, match="runs at 64 px only, not 48"):
        load_image_tokenizer(tmp_path / "janus", image_size=48)
    tiny_vqmodel().save_pretrained(tmp_path / "vqmodel")
    with pytest.raises(UserError, match="not a positive multiple of the tokenizer's factor 4"):
        load_image_tokenizer(tmp_path / "vqmodel", image_size=50)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NETS))
def test_pretrain_caption_generate_and_reload_without_the_source(kind, tiny_run, tmp_path):
    source = tmp_path / kind
    # Emu3 with 1,000 codes: pretraining's cost grows with the book (every code a row of the head,
    # each decoded for --image-init pixels); the int32 cache of a larger one is tested above
    (tiny_emu3(1000) if kind == "emu3" else NETS[kind]()).save_pretrained(source)
    size = [] if kind == "janus" else ["--image-size", str(SIZE)]  # Janus' own size is 64 px; the others take any
    run_script("train/pretrain.py", "--run-dir", str(tmp_path / "run"), "--image-tokenizer", str(source), *size,
               "--text-tokenizer", str(tiny_run / "text" / "text.model"), "--steps", "4", "--text-only-steps", "0",
               "--batch-tokens", "1024", *TINY_DATA, "--wandb", "disabled")
    model = tmp_path / "run" / "model"
    assert json.loads((model / "ugen.json").read_text())["image_size"] == SIZE
    shutil.rmtree(source)  # the model directory holds the tokenizer's weights and config itself
    code = f"""
import numpy as np, ugen
from ugen.data import open_source
m = ugen.load({str(model)!r})
assert m.image_tokenizer.kind == {kind!r} and m.image_size == {SIZE}
drawn = m.generate("a red circle", seed=0)[0]
assert np.asarray(drawn).shape == ({SIZE}, {SIZE}, 3), np.asarray(drawn).shape
image = open_source("shapes", "validation", image_size={SIZE}, num=1).image(0)
caption = m.caption([image])[0]
assert isinstance(caption, str) and caption, caption
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
