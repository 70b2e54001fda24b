"""Scores computed against the Shapes world's ground truth (the parser is the judge)."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ugen.sequences import IGNORE, collate, text_row
from ugen.shapes import COLORS, PLACE_PHRASES, SHAPES, Scene, caption_objects, match_count, parse, scene_matches

# "<color> <shape> <place phrase>", the long captions' way of placing an object; the longer place
# phrases come first so that "at the top left" is not read as "at the top".
_PLACED = re.compile(
    rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) "
    rf"({'|'.join(sorted(PLACE_PHRASES.values(), key=len, reverse=True))})\b"
)
_PLACE_OF_PHRASE = {phrase: place for place, phrase in PLACE_PHRASES.items()}


def caption_names_scene(caption: str, scene: Scene) -> bool:
    """A caption is right when the (color, shape) objects it mentions are exactly the scene's."""
    mentioned = Counter((color, shape) for _, color, shape in caption_objects(caption))
    return mentioned == Counter((o.color, o.shape) for o in scene.objects)


def images_match_sentences(parts: list) -> list[bool]:
    """Of a text with images inside it (str and image parts, `UGen.write`), for each image right
    after a text part that names colored shapes: does the parser read exactly those colors and
    shapes in it (as many of each; sizes and places not checked)?"""
    matches = []
    for before, part in zip(parts, parts[1:]):
        named = isinstance(before, str) and not isinstance(part, str) and caption_objects(before)
        if named:
            found = sorted((o.color, o.shape) for o in parse(np.asarray(part)))
            matches.append(found == sorted((color, shape) for _, color, shape in named))
    return matches


def image_shows(image: np.ndarray, prompt_scene: Scene) -> bool:
    """A generated image is right when the parser finds exactly the prompt's objects, compared on
    the attributes the prompt states (color and shape for 'a red circle')."""
    return scene_matches(parse(image), prompt_scene, check=("color", "shape"))


def answer_correct(predicted: str, answer: str) -> bool:
    return predicted.strip().lower().rstrip(".") == answer.strip().lower()


def mean(flags) -> float:
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value), as seed tables report them."""
    values = list(values)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _prf(mentioned: Counter, actual: Counter) -> tuple[float, float, float]:
    """Precision, recall and F1 of two multisets (precision 0 when nothing is mentioned)."""
    hits = sum((mentioned & actual).values())
    n_mentioned, n_actual = sum(mentioned.values()), sum(actual.values())
    precision = hits / n_mentioned if n_mentioned else 0.0
    recall = hits / n_actual if n_actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def caption_attributes(caption: str, scene: Scene) -> dict:
    """How well a caption's object mentions match the scene, as multisets.

    precision / recall / f1: on (color, shape); an extra mention lowers precision only, a missing
    object recall only, a wrong color both. size_precision / size_recall / size_f1: on (size,
    color, shape), only when the caption gives any size (a mention without one never matches
    there), else None. place_precision / place_recall / place_f1: on (color, shape, place) for
    the objects the caption places ("a red circle at the top left") against the objects whose
    place has a clear name, the spatial layout.
    count_correct: as many objects mentioned as the scene has.
    """
    mentions = caption_objects(caption)
    precision, recall, f1 = _prf(Counter((c, s) for _, c, s in mentions),
                                 Counter((o.color, o.shape) for o in scene.objects))
    out = {"precision": precision, "recall": recall, "f1": f1,
           "size_precision": None, "size_recall": None, "size_f1": None,
           "count_correct": len(mentions) == len(scene.objects)}
    placed = Counter((c, s, _PLACE_OF_PHRASE[p]) for c, s, p in _PLACED.findall(caption.lower()))
    out.update(zip(("place_precision", "place_recall", "place_f1"),
                   _prf(placed, Counter((o.color, o.shape, o.position) for o in scene.objects if o.position))))
    if any(size is not None for size, _, _ in mentions):
        sized = _prf(Counter(mentions), Counter((o.size, o.color, o.shape) for o in scene.objects))
        out.update(zip(("size_precision", "size_recall", "size_f1"), sized))
    return out


def cider(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr-D (x10 scale, as reported in papers) of `candidates[i]` against `references[i]`.

    Scored by pycocoevalcap, the COCO caption reference implementation. Its PTB tokenizer needs
    Java, so texts are tokenized here the way it would for these captions: lower case, punctuation
    dropped. The IDF weights come from the references, so the score is relative to this corpus.
    """
    from pycocoevalcap.cider.cider import Cider

    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference lists")

    def tokens(text: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    refs = {i: [tokens(r) for r in rs] for i, rs in enumerate(references)}
    cands = {i: [tokens(c)] for i, c in enumerate(candidates)}
    score, _ = Cider().compute_score(refs, cands)
    return float(score)


def accuracy_by_type(predicted: list[str], answers: list[str], kinds: list[str]) -> dict[str, list[bool]]:
    """Exact-match flags of each answer, grouped by question type."""
    by_type: dict[str, list[bool]] = {}
    for p, a, kind in zip(predicted, answers, kinds):
        by_type.setdefault(kind, []).append(answer_correct(p, a))
    return dict(sorted(by_type.items()))


@torch.no_grad()
def bits_per_byte(model, texts: list[str], batch_size: int = 64) -> float:
    """Bits per UTF-8 byte of `texts` under the model (`ugen.api.UGen`), as text rows.

    Only the text pieces are scored (not <eos>), so the figure compares across tokenizers: the
    summed cross-entropy in bits over the summed byte length of the texts.
    """
    vocab, nats, total_bytes = model.vocab, 0.0, 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        rows = [text_row(vocab, model.text.encode(t)) for t in chunk]
        batch = {k: v.to(model.device) for k, v in collate(rows, vocab.pad, 10**6).items()}
        labels = batch["labels"].masked_fill(batch["labels"] == vocab.eos, IGNORE)  # (B, T)
        logits = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        nats += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum").item()
        total_bytes += sum(len(t.encode("utf-8")) for t in chunk)
    return nats / math.log(2) / max(1, total_bytes)


@torch.no_grad()
def tokenizer_metrics(tokenizer, examples, batch_size: int = 16) -> dict[str, float]:
    """How well the VQ tokenizer (any `ugen.image_tokenizers.ImageTokenizer`) reconstructs `examples`: PSNR, SSIM
    (torchmetrics), codebook usage and, on Shapes, the parser's reading of the reconstructions
    (objects found exactly, and images read exactly): the ceiling of every generated image."""
    from ugen.rewards import ssim
    from ugen.image_tokenizers import to_tensor, to_uint8

    # Batch by batch, so that memory stays bounded (SSIM's windows cost megabytes per image).
    codes, found, squared_errors, ssims = [], [], [], []
    scenes = all(e.scene is not None for e in examples)
    for start in range(0, len(examples), batch_size):
        images = np.stack([e.image for e in examples[start : start + batch_size]])  # (B, H, W, 3) uint8
        batch_codes = tokenizer.encode(to_tensor(images).to(tokenizer.device))
        codes.append(batch_codes.cpu().numpy())
        recons = to_uint8(tokenizer.decode(batch_codes))
        squared_errors.append(((recons.astype(np.float64) - images.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)))
        ssims.append(ssim(images, recons) * len(images))
        if scenes:
            found += [parse(r) for r in recons]
    mse = np.concatenate(squared_errors)  # (N,)
    used = len(np.unique(np.concatenate(codes)))
    metrics = {
        "psnr_db": float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))),
        "ssim": float(sum(ssims) / len(examples)),
        "codebook_usage": used / tokenizer.num_codes,
        "codes_used": used,
    }
    if scenes:
        total = sum(len(e.scene.objects) for e in examples)
        metrics["parser_object_accuracy"] = sum(match_count(f, e.scene.objects) for f, e in zip(found, examples)) / max(1, total)
        metrics["parser_image_exact"] = mean(scene_matches(f, e.scene) for f, e in zip(found, examples))
    return metrics
