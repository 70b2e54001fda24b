"""GenEval-style prompts and their judge on the Shapes world.

GenEval (Ghosh et al., 2023) asks a text-to-image model for simple compositions and checks the
image with an object detector. Here the detector is the Shapes parser (`ugen.shapes.parse`), which
is exact on clean renders, and the object classes are the three shapes. The six tasks, their
wording (the training captions' short style: "a red circle and a blue square") and how each is
judged on the parsed objects:

  single_object  "a <shape>", sometimes with a size and/or a color ("a small red circle"); three
                 shapes alone give too few distinct prompts, so size and color vary the wording.
                 Judged on the shape only, as GenEval judges the class only: at least one object
                 of that shape.
  two_object     "a <shape> and a <other shape>", each with or without a color ("a red circle
                 and a square"). Judged on the shapes only: at least one object of each.
  counting       "<two|three|four> <shape>s", with or without a color ("three green
                 triangles"). Exactly N objects of that shape, and when a color is named all N
                 have it (so a fourth triangle of any color fails). Other shapes are allowed.
  colors         "a <color> <shape>", sometimes with a size ("a large red circle"). At least one
                 object of that shape has that color.
  position       "a <color> <shape> <relation> a <color> <shape>" with the relation worded as in
                 the training passages and questions ("a red circle to the left of a blue
                 square", "... above ..."). Some object matching A (color and shape) and some
                 other object matching B stand in the relation, read from their centres as in
                 `shapes.RELATIONS`: "to the left of" is a centre at least RELATION_MARGIN
                 (6 px of 48) further left, whatever the heights; "above" likewise.
  color_attr     "a <color> <shape> and a <color> <shape>", two different shapes with two
                 different colors. Both bindings must hold: an object of the first shape in the
                 first color and one of the second shape in the second color (swapped colors
                 fail).

GenEval's rule of thumb holds throughout: the required objects must be present (with the exact
count for counting) and extra objects of other kinds are allowed. Size words are wording only and
never judged. A blank image fails every task.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ugen.shapes import COLORS, NUMBER_WORDS, RELATIONS, SHAPES, SIZES, Scene, ShapeObject, place

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# Relation name -> its wording in prompts (the training text's wording) and its test on (a, b).
RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_RELATION_TESTS = dict(RELATIONS)


@dataclass(frozen=True)
class Item:
    """One required kind of object: `count` objects of `shape`, of `color` when not None. `size`
    is only how the prompt words it (never judged)."""

    count: int
    color: str | None
    shape: str
    size: str | None = None

    def words(self) -> str:
        """'a small red circle', 'an orange square', 'three green triangles', 'two circles'."""
        adjectives = " ".join(w for w in (self.size, self.color) if w)
        if self.count == 1:
            head = f"{adjectives} {self.shape}".strip()
            return f"{'an' if head[0] in 'aeiou' else 'a'} {head}"
        return " ".join(w for w in (NUMBER_WORDS[self.count], adjectives, self.shape + "s") if w)


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and what it requires. For position, `relation` (a key of RELATION_WORDS) holds
    between items[0] (A) and items[1] (B)."""

    task: str
    prompt: str
    items: tuple[Item, ...]
    relation: str | None = None

    def to_dict(self) -> dict:
        return {"task": self.task, "prompt": self.prompt,
                "items": [asdict(i) for i in self.items], "relation": self.relation}

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSpec":
        return cls(d["task"], d["prompt"], tuple(Item(**i) for i in d["items"]), d.get("relation"))


def _spec(task: str, items: list[Item], relation: str | None = None) -> PromptSpec:
    if relation is not None:
        prompt = f"{items[0].words()} {RELATION_WORDS[relation]} {items[1].words()}"
    else:
        prompt = " and ".join(i.words() for i in items)
    return PromptSpec(task, prompt, tuple(items), relation)


def _candidates(task: str) -> list[PromptSpec]:
    """Every distinct prompt of a task, in a fixed order."""
    colors, maybe_colors, maybe_sizes = list(COLORS), [None, *COLORS], [None, *SIZES]
    if task == "single_object":
        return [_spec(task, [Item(1, c, s, z)]) for s in SHAPES for c in maybe_colors for z in maybe_sizes]
    if task == "two_object":
        return [_spec(task, [Item(1, c1, s1), Item(1, c2, s2)])
                for s1, s2 in itertools.permutations(SHAPES, 2) for c1 in maybe_colors for c2 in maybe_colors]
    if task == "counting":
        return [_spec(task, [Item(n, c, s)]) for n in (2, 3, 4) for s in SHAPES for c in maybe_colors]
    if task == "colors":
        return [_spec(task, [Item(1, c, s, z)]) for s in SHAPES for c in colors for z in maybe_sizes]
    if task == "position":
        kinds = list(itertools.product(colors, SHAPES))
        return [_spec(task, [Item(1, *a), Item(1, *b)], rel)
                for a, b in itertools.permutations(kinds, 2) for rel in RELATION_WORDS]
    if task == "color_attr":
        return [_spec(task, [Item(1, c1, s1), Item(1, c2, s2)])
                for s1, s2 in itertools.permutations(SHAPES, 2) for c1, c2 in itertools.permutations(colors, 2)]
    raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")


def make_prompts(seed: int = 0, per_task: int = 60) -> dict[str, list[PromptSpec]]:
    """`per_task` distinct prompts for each of the six tasks, the same for the same seed."""
    return {task: random.Random(f"{seed}-{task}").sample(_candidates(task), per_task) for task in TASKS}


def save_prompts(prompts: dict[str, list[PromptSpec]], path: str | Path) -> None:
    """JSON, one prompt per line."""
    tasks = [f"{json.dumps(task)}: [\n" + ",\n".join(f"  {json.dumps(s.to_dict())}" for s in specs) + "\n ]"
             for task, specs in prompts.items()]
    Path(path).write_text("{\n " + ",\n ".join(tasks) + "\n}\n")


def load_prompts(path: str | Path) -> dict[str, list[PromptSpec]]:
    data = json.loads(Path(path).read_text())
    return {task: [PromptSpec.from_dict(d) for d in specs] for task, specs in data.items()}


# ---------------------------------------------------------------------------------------------
# The judge


def _is(obj: ShapeObject, item: Item, with_color: bool = True) -> bool:
    return obj.shape == item.shape and (not with_color or item.color in (None, obj.color))


def score(found: list[ShapeObject], spec: PromptSpec) -> bool:
    """Whether the parsed objects satisfy the prompt, by the task's rule (see the module doc)."""
    def n(item: Item, with_color: bool = True) -> int:
        return sum(_is(o, item, with_color) for o in found)

    if spec.task in ("single_object", "two_object"):  # classes only
        return all(n(i, with_color=False) >= i.count for i in spec.items)
    if spec.task in ("colors", "color_attr"):  # each shape bound to its color
        return all(n(i) >= i.count for i in spec.items)
    if spec.task == "counting":  # exactly N of the shape, all of the named color
        (item,) = spec.items
        return n(item, with_color=False) == item.count == n(item)
    if spec.task == "position":
        a, b = spec.items
        holds = _RELATION_TESTS[RELATION_WORDS[spec.relation]]
        return any(holds(x, y) for x in found if _is(x, a) for y in found if _is(y, b) and y is not x)
    raise ValueError(f"unknown task {spec.task!r}")


def ground_truth_scene(spec: PromptSpec, rng: random.Random) -> Scene:
    """A scene that realizes the prompt and nothing more: each item's objects with the named
    color and size (random where unnamed), at random free places (for position, places in the
    relation)."""
    kinds = [(i.shape, i.color or rng.choice(list(COLORS)), i.size or rng.choice(SIZES)) for i in spec.items for _ in range(i.count)]
    test = None
    if spec.relation is not None:
        holds = _RELATION_TESTS[RELATION_WORDS[spec.relation]]
        test = lambda objects: holds(objects[0], objects[1])  # noqa: E731
    while True:  # a layout for four large objects may take a few draws of sizes
        objects = place(rng, kinds, test=test)
        if objects is not None:
            return Scene(objects)
        kinds = [(shape, color, "small") if rng.random() < 0.5 else (shape, color, size) for shape, color, size in kinds]


def overall(task_scores: dict[str, float]) -> float:
    """The unweighted mean over the six tasks (GenEval's overall score)."""
    missing = [t for t in TASKS if t not in task_scores]
    if missing:
        raise ValueError(f"scores missing for {missing}")
    return sum(task_scores[t] for t in TASKS) / len(TASKS)
