"""Progressive vocabulary learning (UGen): which image ids are switched on at each step.

Phase 0 (optional) trains on text only. Phase 1 trains on the task mixture while the active set of
image ids grows: `ids_per_add` ids every `add_every` steps, in a fixed order (a seeded random
permutation, as in the paper, or most-frequent code first), until the whole codebook is on.
*Vanilla* has every id active from step 0 with the same data and steps.

The active set is a pure function of the step, so a resumed run continues it exactly; the order and
the resolved (m, k) are saved with checkpoints and the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class VocabSchedule:
    kind: str  # "progressive" or "vanilla"
    num_image: int  # codebook size
    text_only_steps: int  # phase 0 length
    ids_per_add: int  # m
    add_every: int  # k
    order: tuple[int, ...]  # image codes in the order they are switched on

    def phase(self, step: int) -> int:
        return 0 if step < self.text_only_steps else 1

    def num_active(self, step: int) -> int:
        """How many image ids are active at `step`."""
        if self.kind == "vanilla":
            return self.num_image
        if step < self.text_only_steps:
            return 0
        adds = 1 + (step - self.text_only_steps) // self.add_every  # the first add happens on entry
        return min(self.num_image, adds * self.ids_per_add)

    def active_codes(self, step: int) -> torch.Tensor:
        """Bool mask (num_image,) over codes: True where the code is active at `step`."""
        mask = torch.zeros(self.num_image, dtype=torch.bool)
        mask[list(self.order[: self.num_active(step)])] = True
        return mask

    def full_step(self) -> int:
        """The first step at which every id is active."""
        if self.kind == "vanilla":
            return 0
        adds = math.ceil(self.num_image / self.ids_per_add)
        return self.text_only_steps + (adds - 1) * self.add_every

    def to_dict(self) -> dict:
        d = asdict(self)
        d["order"] = list(self.order)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VocabSchedule":
        return cls(**{**d, "order": tuple(d["order"])})


def build_schedule(
    kind: str,
    num_image: int,
    total_steps: int,
    *,
    text_only_steps: int = 0,
    full_at: float = 0.5,
    ids_per_add: int | None = None,
    add_every: int | None = None,
    order: str = "random",
    seed: int = 0,
    code_counts: np.ndarray | None = None,
) -> VocabSchedule:
    """Resolve the schedule's (m, k) and order for a run of `total_steps`.

    With neither m nor k given, m = 1 id every k steps (the paper) when the span allows it; otherwise
    k = 1 and m is the smallest number that switches every id on by `full_at * total_steps`.
    """
    if kind not in ("progressive", "vanilla"):
        raise ValueError(f"unknown vocabulary schedule {kind!r}: progressive or vanilla")
    if not 0 <= text_only_steps < total_steps:
        raise ValueError(f"text-only steps ({text_only_steps}) must be fewer than total steps ({total_steps})")
    if order == "random":
        codes = np.random.default_rng(seed).permutation(num_image)
    elif order == "frequency":
        if code_counts is None:
            raise ValueError("frequency order needs the code counts of the training images")
        codes = np.argsort(-np.asarray(code_counts), kind="stable")  # most frequent first, ties by id
    else:
        raise ValueError(f"unknown vocabulary order {order!r}: random or frequency")

    span = max(1, int(full_at * total_steps) - text_only_steps)  # steps from phase 1 to all-on
    if ids_per_add is None and add_every is None:
        add_every = max(1, span // num_image)
    if add_every is None:
        add_every = max(1, span // math.ceil(num_image / ids_per_add))
    if ids_per_add is None:
        ids_per_add = math.ceil(num_image / max(1, span // add_every + 1))
    if ids_per_add < 1 or add_every < 1:
        raise ValueError("ids per add and add-every steps must be at least 1")
    return VocabSchedule(kind, num_image, text_only_steps, ids_per_add, add_every, tuple(int(c) for c in codes))
