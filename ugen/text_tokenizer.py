"""SentencePiece BPE with byte fallback: any string encodes, nothing maps to <unk>."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from ugen.errors import UserError


class TextTokenizer:
    """A thin wrapper that keeps SentencePiece's own specials out of ugen's id space.

    The model has its own bos/eos/pad (see `ugen.vocab`), so SentencePiece is trained without
    them; only <unk> (id 0) remains, which byte fallback never emits.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no SentencePiece model at {path}")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))

    @property
    def size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


def train_text_tokenizer(texts: Iterable[str], out: str | Path, vocab_size: int) -> TextTokenizer:
    """Train a BPE model with byte fallback on `texts` and write it to `out` (a .model file)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,  # any string encodes, unseen characters as bytes
        hard_vocab_limit=False,  # a small corpus may not have vocab_size merges: take what it has
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        split_digits=True,
        num_threads=2,
        minloglevel=2,
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)
    return TextTokenizer(out)
