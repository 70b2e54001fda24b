"""The code cache: a split's VQ codes and text ids on disk, memory-mapped, built once per identity.

Training reads rows from here, never images: a split is encoded once, chunk by chunk (bounded
memory whatever its size), into flat files that every later run (and every torchrun rank) maps
instead of loading. The directory's name is a hash of everything the contents depend on: the data
set's fingerprint, split, columns, row limit and image size (`Source.identity`), the VQ
tokenizer's weights, the text tokenizer and the text length limit. Changing any of them (editing
the data in place, another --image-column, a retrained tokenizer) is a new cache, never a stale one.

Layout of `<root>/<split>-<hash>/`:
    codes.bin      (N, L) int16   VQ codes of the N readable rows, L = grid * grid (int32 for a
                                  codebook past 32,768 codes: meta.json's code_dtype)
    rows.npy       (N,)   int64   each row's position in its `Source` (to read its image again)
    texts.npy      (N, 3) int64   first text of the row, number of prompts, number of QA pairs
    ids.bin        (M,)   int32   every text's ids, one after another: caption, passage, layout (empty
                                  when the row has none), prompts, (q, a)...
    offsets.npy    (T+1,) int64   where text t starts in ids.bin
    counts.npy     (K,)   int64   how often each code occurs (the frequency order of the vocabulary schedule)
    meta.json      the identity and the number of rows and of skipped rows
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ugen.data.sources import Source, Texts
from ugen.errors import UserError
from ugen.sequences import TokenizedExample
from ugen.text_tokenizer import Tokenizer

CACHE_VERSION = 2  # bump when the layout or what is stored changes (2: each row's scene layout)


class CodeCache:
    """A built cache, memory-mapped: `cache[i]` is row i's codes and text ids (a TokenizedExample)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        n, length = self.meta["rows"], self.meta["codes_per_image"]
        dtype = np.dtype(self.meta.get("code_dtype", "int16"))  # caches written before int32 codes say nothing
        self.codes = np.memmap(self.directory / "codes.bin", dtype=dtype, mode="r", shape=(n, length))
        self.rows = np.load(self.directory / "rows.npy", mmap_mode="r")
        self.texts = np.load(self.directory / "texts.npy", mmap_mode="r")
        self.offsets = np.load(self.directory / "offsets.npy", mmap_mode="r")
        self.ids = np.memmap(self.directory / "ids.bin", dtype=np.int32, mode="r") if self.offsets[-1] else np.zeros(0, np.int32)
        self.code_counts = np.load(self.directory / "counts.npy")
        self.with_qa = np.flatnonzero(np.asarray(self.texts[:, 2]) > 0)  # the rows vqa and text_qa draw from
        first = np.asarray(self.texts[:, 0], dtype=np.int64)
        self.layouts = int((self.offsets[first + 3] - self.offsets[first + 2] > 0).sum())  # rows with a layout

    def __len__(self) -> int:
        return len(self.rows)

    def _ids(self, text: int) -> list[int]:
        return self.ids[self.offsets[text] : self.offsets[text + 1]].tolist()

    def __getitem__(self, i: int) -> TokenizedExample:
        first, prompts, qa = (int(v) for v in self.texts[i])
        after = first + 3 + prompts
        return TokenizedExample(
            codes=np.asarray(self.codes[i]),
            caption=self._ids(first),
            passage=self._ids(first + 1),
            layout=self._ids(first + 2) or None,
            prompts=[self._ids(first + 3 + k) for k in range(prompts)],
            qa=[(self._ids(after + 2 * k), self._ids(after + 2 * k + 1)) for k in range(qa)],
        )


def load_cache(source: Source, vq, text: Tokenizer, max_text: int, root: Path, log: bool = True) -> CodeCache:
    """The cache of `source` under `root`, built first if no run has built it yet.

    Processes that ask at once (torchrun ranks) take turns on a file lock: the first builds, the
    others then map what it built. A build writes into a temporary directory renamed into place
    when complete, so a killed build leaves nothing that reads as a cache (its leftovers are
    removed by the next build)."""
    if source.image_size != vq.image_size:
        raise UserError(f"{source.data}: images read at {source.image_size} px cannot feed a {vq.image_size} px tokenizer")
    identity = {"version": CACHE_VERSION, **source.identity(), "vq": _vq_hash(vq), "text": text_fingerprint(text),
                "max_text": max_text}
    name = f"{source.split}-{hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]}"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    with _locked(root / f"{name}.lock"):
        if not (final / "meta.json").is_file():
            for stale in root.glob(f"tmp-{name}-*"):  # a killed build's: no live builder, we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = root / f"tmp-{name}-{os.getpid()}"
            tmp.mkdir()
            try:
                _build(source, vq, text, max_text, tmp, identity, log)
            except BaseException:  # nothing half-written stays behind (an empty split included)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.rename(final)
    cache = CodeCache(final)
    if cache.meta["skipped"] and log:
        print(f"{source.split}: skipped {cache.meta['skipped']} rows (empty text or unreadable image) of "
              f"{cache.meta['skipped'] + len(cache)}", file=sys.stderr)
    source.skipped = cache.meta["skipped"]
    return cache


def _build(source: Source, vq, text: Tokenizer, max_text: int, out: Path, identity: dict[str, Any], log: bool) -> None:
    from ugen.image_tokenizers import code_dtype, encode_images

    began = time.monotonic()
    length = vq.grid * vq.grid
    rows, row_texts, offsets = [], [], [0]
    counts = np.zeros(vq.num_codes, dtype=np.int64)
    total = len(source) if source.random_access else None
    bar = tqdm(total=total, desc=f"encoding {source.split} images", unit="img", disable=not log)
    with open(out / "codes.bin", "wb") as codes_file, open(out / "ids.bin", "wb") as ids_file:
        for chunk in source.chunks():
            if not chunk:
                continue
            codes = encode_images(vq, np.stack([image for _, _, image in chunk]))  # (n, L) int16 or int32
            codes_file.write(codes.tobytes())
            counts += np.bincount(codes.ravel(), minlength=vq.num_codes)
            for row, texts, _ in chunk:
                rows.append(row)
                row_texts.append((len(offsets) - 1, len(texts.prompts), len(texts.qa)))
                for ids in _encode_texts(texts, text, max_text):
                    ids_file.write(np.asarray(ids, dtype=np.int32).tobytes())
                    offsets.append(offsets[-1] + len(ids))
            bar.update(len(chunk))
    bar.close()
    if not rows:  # refused before meta.json exists: an empty codes.bin cannot be memory-mapped
        raise UserError(f"{source.data}: the {source.split} split has no readable examples "
                        f"({source.skipped} skipped: empty text or unreadable image)")
    np.save(out / "rows.npy", np.asarray(rows, dtype=np.int64))
    np.save(out / "texts.npy", np.asarray(row_texts, dtype=np.int64).reshape(-1, 3))
    np.save(out / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(out / "counts.npy", counts)
    seconds = time.monotonic() - began
    meta = {"identity": identity, "rows": len(rows), "codes_per_image": length, "code_dtype": code_dtype(vq.num_codes).name,
            "skipped": source.skipped,
            "seconds": round(seconds, 2), "images_per_s": round(len(rows) / max(seconds, 1e-9), 1)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _encode_texts(texts: Texts, text: Tokenizer, max_text: int) -> Iterator[list[int]]:
    """A row's texts in the cache's order, clipped to `max_text` pieces (the passage to twice that)
    so that a long caption never pushes the image codes out of a row."""
    yield text.encode(texts.caption)[:max_text]
    yield text.encode(texts.passage or texts.caption)[: 2 * max_text]
    yield text.encode(texts.layout)[:max_text] if texts.layout else []
    for prompt in texts.prompts:
        yield text.encode(prompt)[:max_text]
    for question, answer, _ in texts.qa:
        yield text.encode(question)[:max_text]
        yield text.encode(answer)[:max_text]


def _vq_hash(vq) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(vq.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def text_fingerprint(text: Tokenizer) -> str:
    """What the text ids depend on: the SentencePiece model's bytes, or the HF tokenizer's
    serialized form (not its directory, which may hold an LM's weights)."""
    from ugen.text_tokenizer import HFTextTokenizer

    if isinstance(text, HFTextTokenizer):
        backend = getattr(text.tokenizer, "backend_tokenizer", None)
        content = backend.to_str() if backend is not None else json.dumps(text.tokenizer.get_vocab(), sort_keys=True)
        return hashlib.sha1(content.encode()).hexdigest()
    return hashlib.sha1(Path(text.path).read_bytes()).hexdigest()


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
