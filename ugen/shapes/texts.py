"""Everything said about a scene: captions in several phrasings, one-word question-answer pairs,
text passages, and the reading of (size, color, shape) mentions back out of a caption."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Iterable

from ugen.shapes.scene import (
    COLORS,
    IMAGE_SIZE,
    NUMBER_WORDS,
    PLACE_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
)

# ---------------------------------------------------------------------------------------------
# Text: captions, questions, passages


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_phrase(count: int, words: str, plural: str) -> str:
    """'a red circle' / 'two red circles'."""
    return f"{_article(words)} {words}" if count == 1 else f"{NUMBER_WORDS[count]} {plural}"


def _join(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _plural(shape: str) -> str:
    return shape + "s"


def _grouped(objects: Iterable[ShapeObject], color: bool = True, size: bool = False) -> str:
    """The objects grouped by what is said of them and counted: 'two red circles and a green
    triangle' (with `size`: 'two small red circles ...'; without `color`: 'two circles ...')."""
    def words(o: ShapeObject) -> tuple[str, ...]:
        return tuple(w for w, keep in ((o.size, size), (o.color, color)) if keep) + (o.shape,)

    groups = Counter(words(o) for o in objects)  # insertion order = reading order
    return _join([_count_phrase(n, " ".join(w), " ".join(w[:-1] + (_plural(w[-1]),))) for w, n in groups.items()])


def short_caption(scene: Scene) -> str:
    """Colors and shapes only, the same (color, shape) grouped and counted:
    'two red circles and a green triangle'."""
    return _grouped(scene.objects)


def long_caption(scene: Scene) -> str:
    """Every object's size, color and shape, and its place where the place has a clear name."""
    def said(o: ShapeObject) -> str:
        where = f" {PLACE_PHRASES[o.position]}" if o.position else ""
        return f"{_article(o.size)} {o.phrase()}{where}"

    return _join([said(o) for o in scene.objects])


LAYOUT_STEPS = 12  # a layout's places: the centre on a 12 x 12 lattice (4 px a step at 48 px, half a 6 x 6 code cell)


def layout(scene: Scene) -> str:
    """The scene's plan, what pretraining with --plan writes between a prompt and its image: each
    object's size, color, shape and centre (x then y, 0 to LAYOUT_STEPS - 1 from the top left), in
    the order an image is drawn (top to bottom, then left to right), e.g. "large red circle 2 3;
    small blue square 9 7". Counting and placing become text, which the model writes first and
    then draws from."""
    def step(value: float) -> int:
        return min(LAYOUT_STEPS - 1, max(0, int(value / IMAGE_SIZE * LAYOUT_STEPS)))

    objects = sorted(scene.objects, key=lambda o: (step(o.y), o.x))
    return "; ".join(f"{o.phrase()} {step(o.x)} {step(o.y)}" for o in objects)


def _clear_relations(a: ShapeObject, b: ShapeObject) -> list[str]:
    """The relation words that hold from a to b with the margin."""
    return [words for words, holds in RELATIONS if holds(a, b)]


def relation_caption(scene: Scene, rng: random.Random) -> str | None:
    """'a red circle to the left of a blue square' (and any third object after 'and'), for scenes
    of 2 or 3 objects whose first two, in some order, stand in a clear relation; else None."""
    objs = list(scene.objects)
    if not 2 <= len(objs) <= 3:
        return None
    rng.shuffle(objs)
    a, b, rest = objs[0], objs[1], objs[2:]
    words = _clear_relations(a, b)
    if not words:
        return None
    name = lambda o: f"{_article(o.color)} {o.color} {o.shape}"  # noqa: E731
    text = f"{name(a)} {rng.choice(words)} {name(b)}"
    return text + "".join(f" and {name(o)}" for o in rest)


def captions(scene: Scene, rng: random.Random) -> tuple[str, list[str]]:
    """The caption-task target and the text-to-image prompts of a scene, in varied phrasings.

    The target names every object with its color and shape (what caption scores check), phrased
    one of several ways: with sizes and places, grouped with counts, with a count first ('three
    shapes: ...'), or by a relation. The prompts hold the same and shorter ways of asking for the
    scene: without colors ('two circles and a triangle'), with sizes, by relation.
    """
    n = len(scene.objects)
    things = rng.choice(["objects", "shapes"])
    complete = [long_caption(scene), short_caption(scene), _grouped(scene.objects, size=True)]
    if n > 1:
        complete.append(f"{NUMBER_WORDS[n]} {things}: {short_caption(scene)}")
    relation = relation_caption(scene, rng)
    if relation:
        complete.append(relation)
    target = rng.choice(complete)
    prompts = list(dict.fromkeys([target, short_caption(scene), long_caption(scene),
                                  _grouped(scene.objects, color=False), *([relation] if relation else [])]))
    return target, prompts


def _references(scene: Scene) -> dict[ShapeObject, str]:
    """The shortest unambiguous name of each object by its looks ('the red circle', 'the large red
    circle'); objects that only their place tells apart get none."""
    refs = {}
    for o in scene.objects:
        if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1:
            refs[o] = f"the {o.color} {o.shape}"
        elif sum(p.kind() == o.kind() for p in scene.objects) == 1:
            refs[o] = f"the {o.phrase()}"
    return refs


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """A handful of (question, one-word answer, qtype) about the scene, in random order.

    One question per type where the type applies (spatial: one true and one false when both
    exist); a question is asked only when its answer is unambiguous: a relation only when it
    or its opposite holds with the margin, a place only when it has a clear name held by one
    object.
    """
    objs = scene.objects
    colors = [o.color for o in objs]
    shapes = [o.shape for o in objs]
    out: list[tuple[str, str, str]] = [
        ("how many objects are there?", NUMBER_WORDS[len(objs)], "count")
    ]

    # Count of one color: usually a present one, sometimes an absent one (answer "zero").
    color = rng.choice(colors) if rng.random() < 0.75 else rng.choice(list(COLORS))
    out.append((f"how many {color} objects are there?", NUMBER_WORDS[colors.count(color)], "count"))
    shape = rng.choice(shapes)
    out.append((f"how many {_plural(shape)} are there?", NUMBER_WORDS[shapes.count(shape)], "count_shape"))

    unique_shapes = [o for o in objs if shapes.count(o.shape) == 1]
    if unique_shapes:
        o = rng.choice(unique_shapes)
        out.append((f"what color is the {o.shape}?", o.color, "color"))

    unique_colors = [o for o in objs if colors.count(o.color) == 1]
    if unique_colors:
        o = rng.choice(unique_colors)
        out.append((f"what shape is the {o.color} object?", o.shape, "shape"))

    # Spatial: (a, b, relation) over objects named by their looks, where the relation or its
    # opposite holds with the margin (a near tie is never asked).
    refs = _references(scene)
    named = [o for o in objs if o in refs]
    facts = []
    for a, b in itertools.permutations(named, 2):
        for words, holds in RELATIONS:
            truth = holds(a, b)
            if truth or holds(b, a):  # the opposite relation from a to b is this one from b to a
                facts.append((f"is {refs[a]} {words} {refs[b]}?", truth))
    for truth in (True, False):
        pool = [q for q, t in facts if t == truth]
        if pool:
            out.append((rng.choice(pool), _yes_no(truth), "spatial"))

    small = [o for o in objs if o.size == "small"]
    if len(small) == 1:
        out.append(("what color is the small object?", small[0].color, "small_color"))
    out.append(("is there a small object?", _yes_no(bool(small)), "small_present"))

    places = Counter(o.position for o in objs)
    placed = [o for o in objs if o.position and places[o.position] == 1]
    if placed:
        o = rng.choice(placed)
        out.append((f"what color is the object {PLACE_PHRASES[o.position]}?", o.color, "color_at"))

    # Existence of a color+shape: present or absent with equal odds.
    if rng.random() < 0.5:
        color, shape = rng.choice([(o.color, o.shape) for o in objs])
    else:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    present = (color, shape) in set(zip(colors, shapes))
    out.append((f"is there {_article(color)} {color} {shape}?", _yes_no(present), "exist"))

    rng.shuffle(out)
    return out


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def passage(scene: Scene, rng: random.Random) -> str:
    """A few plain sentences about the scene: the count, each object, some relations."""
    objs = scene.objects
    n = len(objs)
    things = rng.choice(["object", "shape"])
    if n == 1:
        opening = rng.choice([
            f"There is one {things} in the picture.",
            f"The picture shows a single {things}.",
            f"Only one {things} can be seen on the plain background.",
        ])
    else:
        count = NUMBER_WORDS[n]
        opening = rng.choice([
            f"There are {count} {things}s in the picture.",
            f"The picture shows {count} {things}s.",
            f"{_capitalize(count)} {things}s can be seen on the plain background.",
        ])
    sentences = [opening]
    for o in objs:
        a = _capitalize(_article(o.size))
        if o.position:
            place = PLACE_PHRASES[o.position]
            sentences.append(rng.choice([
                f"{a} {o.phrase()} is {place}.",
                f"{a} {o.phrase()} sits {place}.",
                f"{_capitalize(place)} there is {_article(o.size)} {o.phrase()}.",
            ]))
        else:
            sentences.append(rng.choice([f"There is {_article(o.size)} {o.phrase()}.", f"{a} {o.phrase()} is there too."]))
    refs = _references(scene)
    named = [o for o in objs if o in refs]
    # One or two relations between distinct pairs that stand in a clear one, each told from a
    # random side.
    pairs = [(a, b) for a, b in itertools.combinations(named, 2) if _clear_relations(a, b)]
    for a, b in rng.sample(pairs, min(len(pairs), rng.randint(1, 2))):
        if rng.random() < 0.5:
            a, b = b, a
        sentences.append(f"{_capitalize(refs[a])} is {' and '.join(_clear_relations(a, b))} {refs[b]}.")
    if n > 1 and rng.random() < 0.5:
        colors = {o.color for o in objs}
        sentences.append("All of them have the same color." if len(colors) == 1 else
                         f"They come in {NUMBER_WORDS[len(colors)]} different colors.")
    return " ".join(sentences)


_SIZE_WORDS = set(SIZES)
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{_plural(s): s for s in SHAPES}}
_COUNT_WORDS = {"a": 1, "an": 1, **{w: i for i, w in enumerate(NUMBER_WORDS)}}
# Words after which a pending count/size/color no longer applies to the next shape word.
_BREAK_WORDS = {"and", "object", "objects", "shape", "shapes", ".", ",", ";", ":"}


def caption_objects(text: str) -> list[tuple[str | None, str, str]]:
    """Read the (size or None, color, shape) mentions out of a caption, expanding counts:
    'two small red circles' gives two ('small', 'red', 'circle'). Unknown words are ignored; a
    shape word with no color before it is not a mention (it cannot be checked)."""
    for mark in ".,;:!?":
        text = text.replace(mark, f" {mark} ")
    found: list[tuple[str | None, str, str]] = []
    count, size, color = 1, None, None
    for word in text.lower().split():
        if word in _SHAPE_WORDS:
            if color is not None:
                found.extend([(size, color, _SHAPE_WORDS[word])] * count)
            count, size, color = 1, None, None
        elif word in _COUNT_WORDS:
            count = _COUNT_WORDS[word]
        elif word in _SIZE_WORDS:
            size = word
        elif word in COLORS:
            color = word
        elif word in _BREAK_WORDS:
            count, size, color = 1, None, None
    return found


