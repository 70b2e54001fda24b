"""Image similarities on hand-made cases whose answer is known."""

import numpy as np
import pytest
import torch

from ugen import rewards
from ugen.shapes import BACKGROUND, Scene, ShapeObject, render
from ugen.image_tokenizers import UgenVQ, VQConfig


def at_cell(shape, color, size, cell):
    """An object in the middle of one cell of a 3x3 grid of the 48 px image (cells 16 px apart:
    further than the relation margin, so left of / above read as on the grid)."""
    return ShapeObject(shape, color, size, 8.0 + 16 * (cell % 3), 8.0 + 16 * (cell // 3), 14.0 if size == "large" else 8.0)


A = Scene((at_cell("circle", "red", "large", 0), at_cell("square", "blue", "small", 8)))
B = Scene((at_cell("circle", "red", "large", 0),))
BLANK = np.full((48, 48, 3), BACKGROUND, dtype=np.uint8)


def test_object_f1():
    assert rewards.object_f1(render(A), render(A), A) == 1.0
    assert rewards.object_f1(render(A), render(B), A) == pytest.approx(2 * 1 / (2 + 1))  # one of two found
    assert rewards.object_f1(render(A), BLANK, A) == 0.0
    assert rewards.object_f1(BLANK, BLANK) == 1.0  # nothing to find, nothing found
    assert rewards.object_f1(render(B), render(B)) == 1.0  # no scene: the original's parse is the truth


def test_named_f1_checks_color_and_shape_not_size_or_place():
    moved = Scene((at_cell("circle", "red", "small", 4), at_cell("square", "blue", "large", 2)))  # A's kinds elsewhere
    assert rewards.object_f1(render(A), render(moved), A) == 0.0
    assert rewards.named_f1(render(A), render(moved), A) == 1.0
    recolored = Scene((at_cell("circle", "green", "large", 0), at_cell("square", "blue", "small", 8)))
    assert rewards.named_f1(render(A), render(recolored), A) == pytest.approx(2 * 1 / (2 + 2))
    assert rewards.named_f1(render(A), BLANK, A) == 0.0


def test_ssim_and_feature_cosine_are_one_for_identical_images():
    assert rewards.ssim(render(A), render(A)) == pytest.approx(1.0)
    assert rewards.ssim(render(A), BLANK) < 0.9
    torch.manual_seed(0)
    cosine = rewards.VQFeatureCosine(UgenVQ(VQConfig()).eval())
    assert cosine(render(A), render(A)) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= cosine(render(A), BLANK) < 1.0


def tiny_dinov2(path):
    """A randomly initialized DINOv2 with its image processor, saved like a user's checkpoint."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          patch_size=8, image_size=32)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_hugging_face_vision_cosine_from_a_local_path(tmp_path):
    reward = rewards.HFVisionCosine(tiny_dinov2(tmp_path / "dinov2"))
    assert reward(render(A), render(A), None) == pytest.approx(1.0, abs=1e-5)
    assert reward(render(A), BLANK, None) < reward(render(A), render(A), None)
    with pytest.raises(rewards.UserError, match="config.json"):
        rewards.HFVisionCosine(tmp_path / "nothing-here")


def test_weighted_sums_and_reward_specs(tmp_path):
    combo = rewards.build_reward("object_f1=0.75,ssim=0.25")
    original, recon = render(A), render(B)
    expected = 0.75 * rewards.object_f1(original, recon, A) + 0.25 * rewards.ssim(original, recon, A)
    assert combo(original, recon, A) == pytest.approx(expected)
    assert rewards.build_reward("object_f1")(original, original, A) == 1.0  # weight 1 by default
    named = rewards.build_reward("named_f1=0.5,ssim=0.5")
    assert named(original, recon, A) == pytest.approx(0.5 * (2 * 1 / 3) + 0.5 * rewards.ssim(original, recon, A))
    hf = rewards.build_reward("hf_cosine=2", reward_model=str(tiny_dinov2(tmp_path / "m")))
    assert hf(original, original, None) == pytest.approx(2.0, abs=1e-4)
    for bad, message in [("bleu", "unknown reward"), ("ssim=x", "not a number"), ("hf_cosine", "--reward-model"), ("", "empty")]:
        with pytest.raises(rewards.UserError, match=message):
            rewards.build_reward(bad)
