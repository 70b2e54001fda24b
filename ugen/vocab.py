"""The unified id space: specials, then text pieces, then image codes, in that order.

One transformer vocabulary serves both modalities. Which range is which is saved with the model
(`ugen.json`), so every reader maps ids the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# Order is part of the saved format: append, never reorder.
SPECIALS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<boi>",  # begin of image: the next grid*grid ids are image codes
    "<eoi>",  # end of image
    "<img_mask>",  # stands in for an image id that the progressive schedule has not switched on yet
    "<caption>",  # task marker: image -> caption
    "<answer>",  # task marker: the answer to the question before it follows
    "<gen>",  # task marker: caption -> image
)


@dataclass(frozen=True)
class Vocab:
    num_text: int  # SentencePiece pieces
    num_image: int  # VQ codebook size
    specials: tuple[str, ...] = SPECIALS

    def __post_init__(self):
        object.__setattr__(self, "specials", tuple(self.specials))

    # -- ranges -------------------------------------------------------------------------------
    @property
    def text_start(self) -> int:
        return len(self.specials)

    @property
    def image_start(self) -> int:
        return self.text_start + self.num_text

    @property
    def size(self) -> int:
        return self.image_start + self.num_image

    def special(self, name: str) -> int:
        """Id of a special token by name, e.g. `vocab.special("<boi>")`."""
        return self.specials.index(name)

    def __getattr__(self, name: str) -> int:
        # vocab.pad, vocab.bos, vocab.boi, vocab.gen ... read better than vocab.special("<pad>")
        token = f"<{name}>"
        if name.startswith("_") or token not in self.specials:
            raise AttributeError(name)
        return self.specials.index(token)

    # -- conversions --------------------------------------------------------------------------
    def from_text(self, piece_ids: list[int]) -> list[int]:
        return [self.text_start + i for i in piece_ids]

    def to_text(self, ids: list[int]) -> list[int]:
        """SentencePiece ids of the text ids among `ids` (specials and image ids dropped)."""
        return [i - self.text_start for i in ids if self.text_start <= i < self.image_start]

    def from_codes(self, codes) -> list[int]:
        return [self.image_start + int(c) for c in codes]

    def to_codes(self, ids: list[int]) -> list[int]:
        return [i - self.image_start for i in ids if i >= self.image_start]

    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.image_start

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.text_start) & (ids < self.image_start)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["specials"] = list(self.specials)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(num_text=d["num_text"], num_image=d["num_image"], specials=tuple(d["specials"]))
