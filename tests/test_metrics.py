"""Scores on hand-made cases whose answer is known."""

import numpy as np
import pytest

from ugen.metrics import accuracy_by_type, answer_correct, caption_names_scene, cider, image_shows, mean
from ugen.shapes import BACKGROUND, Scene, ShapeObject, render


def at_cell(shape, color, size, cell):
    """An object in the middle of one cell of a 3x3 grid of the 48 px image (cells 16 px apart:
    further than the relation margin, so left of / above read as on the grid)."""
    return ShapeObject(shape, color, size, 8.0 + 16 * (cell % 3), 8.0 + 16 * (cell // 3), 14.0 if size == "large" else 8.0)


RED_CIRCLE = Scene((at_cell("circle", "red", "large", 4),))


def test_caption_scores():
    assert caption_names_scene("a large red circle in the center", RED_CIRCLE)
    assert not caption_names_scene("a large blue circle in the center", RED_CIRCLE)  # wrong color
    assert not caption_names_scene("a large red square in the center", RED_CIRCLE)  # wrong shape
    assert not caption_names_scene("a red circle and a blue square", RED_CIRCLE)  # an extra object
    two = Scene((at_cell("circle", "red", "small", 0), at_cell("circle", "red", "large", 8)))
    assert caption_names_scene("two red circles", two)


def test_image_scores_use_the_parser():
    assert image_shows(render(RED_CIRCLE), RED_CIRCLE)
    # The prompt "a red circle" fixes color and shape only: another size and place still counts.
    elsewhere = Scene((at_cell("circle", "red", "small", 0),))
    assert image_shows(render(elsewhere), RED_CIRCLE)
    assert not image_shows(render(Scene((at_cell("circle", "green", "large", 4),))), RED_CIRCLE)
    blank = np.full((48, 48, 3), BACKGROUND, dtype=np.uint8)
    assert not image_shows(blank, RED_CIRCLE)


def test_answers_and_mean():
    assert answer_correct(" Red.", "red") and not answer_correct("blue", "red")
    assert mean([True, False, True, True]) == 0.75
    assert np.isnan(mean([]))


def test_answers_grouped_by_question_type():
    flags = accuracy_by_type(["red", "two", "no"], ["red", "three", "no"], ["color", "count", "exist"])
    assert flags == {"color": [True], "count": [False], "exist": [True]}


def test_cider_on_known_cases():
    refs = [["a red circle at the top left"], ["two blue squares on the right"], ["a small green triangle in the center"]]
    perfect = [r[0] for r in refs]
    assert cider(perfect, refs) == pytest.approx(10.0)  # CIDEr-D's x10 scale: identical texts score 10
    assert cider(["A red circle, at the top left.", *perfect[1:]], refs) == pytest.approx(10.0)  # case, punctuation
    wrong_color = ["a blue circle at the top left", *perfect[1:]]
    assert cider(wrong_color, refs) < cider(perfect, refs)
    assert cider(["purple stars"] * 3, refs) == 0.0  # nothing in common


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_per_byte():
    import math
    from types import SimpleNamespace

    import torch

    from ugen.vocab import Vocab

    class Pieces:  # one piece per character: the hand count is easy
        def encode(self, text):
            return [ord(c) % 50 for c in text]

    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, vocab.size))

    from ugen.metrics import bits_per_byte

    vocab = Vocab(num_text=50, num_image=10)
    model = SimpleNamespace(vocab=vocab, text=Pieces(), device=torch.device("cpu"), model=Uniform())
    texts = ["a red circle", "two blue squares and a triangle"]
    pieces = sum(len(t) for t in texts)
    assert bits_per_byte(model, texts, batch_size=1) == pytest.approx(pieces * math.log2(vocab.size) / pieces)
