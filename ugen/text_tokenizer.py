"""Text tokenizers: ugen's own SentencePiece BPE, or a pretrained LM's Hugging Face tokenizer.

SentencePiece is trained with byte fallback, so any string encodes and nothing maps to <unk>. A
model started from a pretrained LM (`train/pretrain.py --init-from`) keeps that LM's tokenizer, as
its ids are what the LM's embedding rows mean. Both kinds have one interface (`encode`, `decode`,
`size`, `never_emitted`, `save`), so nothing past loading cares which one a model uses.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Iterable, Union

import sentencepiece as spm

from ugen.errors import UserError, one_line


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

    @property
    def never_emitted(self) -> tuple[int, ...]:
        return ()  # trained without specials; byte fallback never emits <unk>

    def save(self, directory: Path) -> str:
        """Copy the model into a model directory; returns its name there (recorded in ugen.json)."""
        shutil.copy(self.path, directory / "text.model")
        return "text.model"


class HFTextTokenizer:
    """A pretrained LM's Hugging Face tokenizer (`AutoTokenizer`), without its own specials.

    ugen writes its own bos/eos/pad (see `ugen.vocab`), so `encode` adds none of the LM's, and the
    LM's special and added tokens are `never_emitted`: a sampled <|endoftext|> or chat marker would
    mean nothing to ugen's sequence formats.
    """

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        self.path = Path(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{self.path}: AutoTokenizer cannot load it ({one_line(err)})") from None

    @property
    def size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        # split_special_tokens: a caption that spells "<|im_start|>" is text, not the LM's marker
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def never_emitted(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)))

    def save(self, directory: Path) -> str:
        """`save_pretrained` into `directory/text`: the tokenizer's files only, where the LM's
        directory it came from also holds weights."""
        self.tokenizer.save_pretrained(directory / "text")
        return "text"


Tokenizer = Union[TextTokenizer, HFTextTokenizer]


def load_text_tokenizer(path: str | Path) -> Tokenizer:
    """A SentencePiece `.model` file (or a directory holding one, as a ugen model or RUN/text does)
    or a Hugging Face tokenizer directory, by what `path` is."""
    path = Path(path)
    if path.is_dir() and len(models := list(path.glob("*.model"))) == 1:
        path = models[0]
    if path.is_file() and path.suffix == ".model":
        return TextTokenizer(path)
    if path.is_dir() and any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return HFTextTokenizer(path)
    raise UserError(f"no SentencePiece .model file nor Hugging Face tokenizer directory at {path}")


def train_text_tokenizer(texts: Iterable[str], out: str | Path, vocab_size: int) -> TextTokenizer:
    """Train a BPE model with byte fallback on `texts` and write it to `out` (a .model file)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    try:
        _train_bpe(texts, buffer, vocab_size)
    except RuntimeError as err:  # SentencePiece's own checks, e.g. fewer pieces than distinct characters
        raise UserError(f"SentencePiece cannot train on this text: {one_line(err)}") from None
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)
    return TextTokenizer(out)


def _train_bpe(texts: Iterable[str], buffer: io.BytesIO, vocab_size: int) -> None:
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
