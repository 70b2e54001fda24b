"""Train the SentencePiece BPE text tokenizer (byte fallback) on the training split's texts.

    python tokenizers/train_text.py --out runs/default/text            # Shapes
    python tokenizers/train_text.py --out runs/x/text --data PATH --text-column caption

The corpus is every caption, generation prompt, question, answer and passage of the train split.
Writes OUT/text.model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

from ugen.data import add_data_args, open_split
from ugen.errors import UserError
from ugen.runtime import add_common_args, run_main
from ugen.text_tokenizer import train_text_tokenizer


def corpus(source) -> Iterator[str]:
    """Every text of the split's rows, read without decoding a single image."""
    for t in source.iter_texts():
        yield from (t.caption, *t.prompts, *(x for q, a, _ in t.qa for x in (q, a)))
        if t.passage:
            yield t.passage
        if t.layout:  # the plans a model trained with --plan writes
            yield t.layout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/default/text", help="directory to write text.model into")
    parser.add_argument("--vocab-size", type=int, default=512,
                        help="pieces, including the 256 byte-fallback pieces (a small corpus may yield fewer)")
    add_data_args(parser)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.vocab_size <= 260:
        raise UserError(f"--vocab-size {args.vocab_size}: must exceed the 256 byte pieces plus <unk>")
    texts = list(corpus(open_split(args, "train")))
    if not texts:
        raise UserError(f"{args.data}: no text to train the tokenizer on")
    out = Path(args.out) / "text.model"
    tokenizer = train_text_tokenizer(texts, out, args.vocab_size)
    pieces = sum(len(tokenizer.encode(t)) for t in texts[:2000])
    chars = sum(len(t) for t in texts[:2000])
    print(f"train_text: {tokenizer.size} pieces from {len(texts)} texts, {chars / pieces:.2f} chars/piece -> {out}")


if __name__ == "__main__":
    run_main(main)
