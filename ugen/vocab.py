"""The unified id space: specials, then text pieces, then image codes, in that order.

One transformer vocabulary serves both modalities. Which range is which is saved with the model
(`ugen.json`), so every reader maps ids the same way.

A model started from a pretrained language model keeps that model's ids where they are (its rows
hold what it learned), so its layout puts the text first: text pieces, then specials, then image
codes (`text_first`). Image codes come after both in either layout.
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
    "<plan>",  # after a generation prompt: the scene's layout as text follows, then the image
    "<eol>",  # ends each row of image codes in a model trained with row ends (`Vocab.row_length`)
)


@dataclass(frozen=True)
class Vocab:
    num_text: int  # text-tokenizer ids (a pretrained LM: its embedding rows, padding rows included)
    num_image: int  # VQ codebook size
    specials: tuple[str, ...] = SPECIALS
    text_first: bool = False  # the layout of a model started from a pretrained LM: text, specials, images
    # Text-tokenizer ids that sampling never draws: a pretrained LM's own specials (its eos, pad,
    # chat markers), which ugen's specials replace, and its embedding rows no tokenizer id reaches.
    never_emitted: tuple[int, ...] = ()
    # Codes per row of an image when every row ends with <eol> (Emu3's and Lumina-mGPT's row-end
    # tokens: the transformer sees where each row of the code grid ends); 0: codes alone.
    row_length: int = 0

    def __post_init__(self):
        object.__setattr__(self, "specials", tuple(self.specials))
        object.__setattr__(self, "never_emitted", tuple(int(i) for i in self.never_emitted))
        if any(not 0 <= i < self.num_text for i in self.never_emitted):
            raise ValueError(f"never_emitted ids must be text ids in [0, {self.num_text})")
        if self.row_length < 0 or (self.row_length and "<eol>" not in self.specials):
            raise ValueError(f"row_length {self.row_length} needs a vocabulary with <eol> and must be >= 0")

    # -- ranges -------------------------------------------------------------------------------
    @property
    def text_start(self) -> int:
        return 0 if self.text_first else len(self.specials)

    @property
    def text_end(self) -> int:
        """One past the last text id."""
        return self.text_start + self.num_text

    @property
    def special_start(self) -> int:
        return self.num_text if self.text_first else 0

    @property
    def image_start(self) -> int:
        return len(self.specials) + self.num_text

    @property
    def size(self) -> int:
        return self.image_start + self.num_image

    def special(self, name: str) -> int:
        """Id of a special token by name, e.g. `vocab.special("<boi>")`."""
        return self.special_start + self.specials.index(name)

    def __getattr__(self, name: str) -> int:
        # vocab.pad, vocab.bos, vocab.boi, vocab.gen ... read better than vocab.special("<pad>")
        token = f"<{name}>"
        if name.startswith("_") or token not in self.specials:
            raise AttributeError(name)
        return self.special(token)

    # -- conversions --------------------------------------------------------------------------
    def from_text(self, piece_ids: list[int]) -> list[int]:
        return [self.text_start + i for i in piece_ids]

    def to_text(self, ids: list[int]) -> list[int]:
        """Text-tokenizer ids of the text ids among `ids` (specials and image ids dropped)."""
        return [i - self.text_start for i in ids if self.text_start <= i < self.text_end]

    def from_codes(self, codes) -> list[int]:
        return [self.image_start + int(c) for c in codes]

    def image_span(self, codes) -> list[int]:
        """An image's tokens between <boi> and <eoi>: its code ids, each row followed by <eol> when
        the model has row ends."""
        ids = self.from_codes(codes)
        if not self.row_length:
            return ids
        if len(ids) % self.row_length:
            raise ValueError(f"{len(ids)} codes do not make rows of {self.row_length}")
        eol = self.special("<eol>")
        return [t for row in range(0, len(ids), self.row_length) for t in (*ids[row : row + self.row_length], eol)]

    def span_length(self, codes: int) -> int:
        """Tokens between <boi> and <eoi> for an image of `codes` codes."""
        return codes + (codes // self.row_length if self.row_length else 0)

    def to_codes(self, ids: list[int]) -> list[int]:
        return [i - self.image_start for i in ids if i >= self.image_start]

    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.image_start

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.text_start) & (ids < self.text_end)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["specials"] = list(self.specials)
        d["never_emitted"] = list(self.never_emitted)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        """Directories written before the text-first layout (or row ends) existed lack their fields."""
        return cls(num_text=d["num_text"], num_image=d["num_image"], specials=tuple(d["specials"]),
                   text_first=d.get("text_first", False), never_emitted=tuple(d.get("never_emitted", ())),
                   row_length=d.get("row_length", 0))
