"""Image similarities on hand-made cases whose answer is known."""

import numpy as np
import pytest
import torch

from ugen import rewards
from ugen.shapes import BACKGROUND, Scene, ShapeObject, render
from ugen.vq import ImageTokenizer, VQConfig

A = Scene((ShapeObject("circle", "red", "large", 0), ShapeObject("square", "blue", "small", 8)))
B = Scene((ShapeObject("circle", "red", "large", 0),))
BLANK = np.full((48, 48, 3), BACKGROUND, dtype=np.uint8)


def test_object_f1():
    assert rewards.object_f1(render(A), render(A), A) == 1.0
    assert rewards.object_f1(render(A), render(B), A) == pytest.approx(2 * 1 / (2 + 1))  # one of two found
    assert rewards.object_f1(render(A), BLANK, A) == 0.0
    assert rewards.object_f1(BLANK, BLANK) == 1.0  # nothing to find, nothing found
    assert rewards.object_f1(render(B), render(B)) == 1.0  # no scene: the original's parse is the truth


def test_ssim_and_feature_cosine_are_one_for_identical_images():
    assert rewards.ssim(render(A), render(A)) == pytest.approx(1.0)
    assert rewards.ssim(render(A), BLANK) < 0.9
    torch.manual_seed(0)
    cosine = rewards.VQFeatureCosine(ImageTokenizer(VQConfig()).eval())
    assert cosine(render(A), render(A)) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= cosine(render(A), BLANK) < 1.0
