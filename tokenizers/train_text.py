"""Train the SentencePiece BPE text tokenizer (byte fallback) on the training split's texts.

    python tokenizers/train_text.py --out runs/default/text            # Shapes
    python tokenizers/train_text.py --out runs/x/text --data PATH --text-column caption

The corpus is every caption, generation prompt, question, answer and passage of the train split.
Writes OUT/text.model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ugen.data import add_data_args, load_split
from ugen.errors import UserError
from ugen.runtime import add_common_args, run_main
from ugen.text_tokenizer import train_text_tokenizer


def corpus(examples) -> list[str]:
    texts = []
    for e in examples:
        texts += [e.caption, *e.prompts, *(t for q, a, _ in e.qa for t in (q, a))]
        if e.passage:
            texts.append(e.passage)
    return texts


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
    examples, skipped = load_split(args, "train")
    if skipped:
        print(f"train: skipped {skipped} unreadable rows of {len(examples) + skipped}", file=sys.stderr)
    texts = corpus(examples)
    if not texts:
        raise UserError(f"{args.data}: no text to train the tokenizer on")
    out = Path(args.out) / "text.model"
    tokenizer = train_text_tokenizer(texts, out, args.vocab_size)
    pieces = sum(len(tokenizer.encode(t)) for t in texts[:2000])
    chars = sum(len(t) for t in texts[:2000])
    print(f"train_text: {tokenizer.size} pieces from {len(texts)} texts, {chars / pieces:.2f} chars/piece -> {out}")


if __name__ == "__main__":
    run_main(main)
