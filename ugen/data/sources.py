"""Where the rows of every training stage come from, read on demand.

The Shapes world (`ugen.shapes`) and any image-caption data set that `datasets` can open are both
a `Source`: the rows of one split, whose texts are read without decoding any image and whose
images are decoded (or rendered) one row or one chunk at a time, at the VQ tokenizer's resolution.
Nothing holds a whole data set's pixels: the stages downstream encode chunks into the code cache
(`ugen.data.cache`) and train from it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from ugen.errors import UserError
from ugen.example import Example, Texts

# ---------------------------------------------------------------------------------------------
# Loading: the Shapes world or any image-caption data set that `datasets` can open
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "validation", "test")  # the names ugen.shapes uses too
# Names a data set may already use for our splits; a split it lacks is carved out of "train".
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}
_CARVE_PERCENT = {"test": 5, "validation": 5}  # the rest stays in train
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def add_data_args(parser: argparse.ArgumentParser, from_model: bool = False) -> None:
    """Flags that pick the data set, so that every stage script reads data the same way.

    `from_model`: the script reads a trained model, whose training data (`data_of_model`) is the
    default of --data and the column names."""
    group = add_source_args(parser, from_model)
    group.add_argument("--num-train", type=int, default=None,
                       help="training examples (default: 20000 for shapes, every row for other data)")
    group.add_argument("--num-val", type=int, default=500, help="validation examples (at most)")
    group.add_argument("--image-size", type=int, default=None,
                       help="images are centre-cropped and resized to this (default: the VQ tokenizer's; when "
                            "training the tokenizer, 48 for shapes, else the data's own: the most common side "
                            "of its first images, rounded to the tokenizer's factor, at most 256)")


def add_source_args(parser: argparse.ArgumentParser, from_model: bool = False) -> argparse._ArgumentGroup:
    """--data and its column names (the eval takes these alone); returns their group."""
    group = parser.add_argument_group("data")
    model_default = " (default: the model's training data)" if from_model else ""
    group.add_argument("--data", default=None if from_model else "shapes",
                       help="'shapes' (generated in-process), a datasets hub name, or a local path: an "
                            "imagefolder directory with metadata.jsonl, a parquet file or directory, or a "
                            "json/jsonl file whose image column holds paths relative to it" + model_default)
    group.add_argument("--image-column", default=None if from_model else "image",
                       help="column that holds the images" + model_default)
    group.add_argument("--text-column", default=None if from_model else "text",
                       help="column that holds the captions" + model_default)
    group.add_argument("--layout-column", default=None,
                       help="column that holds each image's layout as text (what is where), which pretraining with "
                            "--plan writes between a caption and its image (optional; Shapes makes its own)"
                            + model_default)
    group.add_argument("--streaming", action="store_true",
                       help="read a hub data set as a stream instead of downloading it first (needs the network: "
                            "unset HF_HUB_OFFLINE); the codes are cached as usual, RL needs random access")
    return group


DATA_FLAGS = ("data", "image_column", "text_column", "layout_column")
DATA_DEFAULTS = ("shapes", "image", "text", None)


def data_of_model(args: argparse.Namespace, meta: dict[str, Any]) -> None:
    """Fill the data flags left unset (None) with those the model was pretrained on (`meta` is its
    ugen.json), so that RL and the eval read a model's own data unless told otherwise."""
    trained_on = meta.get("pretrain", {})
    for name, fallback in zip(DATA_FLAGS, DATA_DEFAULTS):
        if getattr(args, name) is None:
            setattr(args, name, trained_on.get(name, fallback))


MAX_DEFAULT_SIZE = 256  # LlamaGen's: larger images are trained at this size unless --image-size says otherwise
SIZE_SAMPLE = 64  # images whose headers choose the default size


def default_image_size(data: str) -> int:
    """The resolution a new VQ tokenizer is trained at for data not yet opened: the Shapes world's
    own, or LlamaGen's 256 px (`data_image_size` looks at the data itself)."""
    if data == "shapes":
        from ugen import shapes

        return shapes.IMAGE_SIZE
    return MAX_DEFAULT_SIZE


def data_image_size(args: argparse.Namespace) -> tuple[int, str]:
    """The resolution to train a new image tokenizer at, and why, in a line: Shapes' own, or the
    most common longer side among the first SIZE_SAMPLE readable images of the train split (read
    from their headers), rounded to a multiple of 8 (of 16 above 128 px, where the default factor
    is 16), at least 32 and at most 256. Upscaling 48 px scans to 256 px costs 28 times the pixels
    and buys nothing."""
    if args.data == "shapes":
        return default_image_size("shapes"), "the Shapes world's own"
    source = open_split(argparse.Namespace(**{**vars(args), "image_size": MAX_DEFAULT_SIZE}), "train")
    sides = Counter(side for side in (_image_side(v, source.base_dir) for v in source.raw_images(SIZE_SAMPLE)) if side)
    if not sides:
        raise UserError(f"--data {args.data}: none of the first {SIZE_SAMPLE} rows of its train split has an image "
                        "PIL can read")
    side, count = sides.most_common(1)[0]
    step = 8 if side <= 128 else 16
    size = min(MAX_DEFAULT_SIZE, max(32, step * round(side / step)))
    return size, (f"{count} of the first {sum(sides.values())} images are {side} px on their longer side"
                  f"{'' if size == side else f', rounded to {size}'}; --image-size to choose another")


def _image_side(value: Any, base_dir: Path | None) -> int | None:
    """The longer side of an image value (PIL image, {"bytes", "path"} or a path), from its header."""
    try:
        if isinstance(value, PIL.Image.Image):
            return max(value.size)
        raw, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
        if raw is None and isinstance(path, str) and path:
            path = Path(path) if Path(path).is_absolute() or base_dir is None else base_dir / path
            with PIL.Image.open(path) as image:
                return max(image.size)
        with PIL.Image.open(io.BytesIO(raw)) as image:
            return max(image.size)
    except (OSError, ValueError, TypeError, SyntaxError, PIL.Image.DecompressionBombError):
        return None


def open_split(args: argparse.Namespace, split: str) -> Source:
    """`open_source` with the flags of `add_data_args` (--num-train for train, --num-val otherwise)."""
    num = args.num_train if split == "train" else args.num_val
    return open_source(args.data, split, image_column=args.image_column, text_column=args.text_column,
                       layout_column=getattr(args, "layout_column", None),
                       image_size=args.image_size or default_image_size(args.data), num=num, seed=args.seed,
                       streaming=getattr(args, "streaming", False))


def open_source(
    data: str,
    split: str,
    *,
    image_column: str = "image",
    text_column: str = "text",
    layout_column: str | None = None,
    image_size: int = 48,
    num: int | None = None,
    seed: int = 0,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> Source:
    """The rows of one split ("train", "validation" or "test") of `data`.

    Shapes is generated from `seed` (20000 scenes when `num` is None); other data is read with
    `datasets`, its first `num` rows of the split (all when None). A row whose text is empty is
    left out here (counted in `skipped`); one whose image cannot be read is left out where it is
    decoded (`Source.chunks` counts it), rather than aborting a pass over millions of rows.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if num is not None and num < 0:
        raise UserError(f"the number of examples must be >= 0, not {num}")
    if data == "shapes":
        return ShapesSource(split, 20000 if num is None else num, seed, image_size)
    rows, base_dir, revision = _open_split(data, split, streaming, cache_dir)
    columns = rows.column_names or list(rows.features or {})
    for column in (image_column, text_column, *([layout_column] if layout_column else [])):
        if column not in columns:
            raise UserError(f"{data}: no column {column!r}; available columns: {', '.join(columns)}")
    kind = StreamSource if streaming else TableSource
    source = kind(data, split, rows, base_dir, image_column, text_column, image_size, num, layout_column)
    if revision is not None:
        source.fingerprint += f" at revision {revision}"
    return source


def load_examples(data: str, split: str, *, num: int | None = None, **kwargs) -> tuple[list[Example], int]:
    """The first `num` readable examples of a split in memory (a test set, a few probe images) and
    the number of rows skipped (empty text or unreadable image)."""
    source = open_source(data, split, num=num, **kwargs)
    return source.examples(), source.skipped


CHUNK = 256  # rows decoded at once: bounded memory whatever the data set's size
DECODE_THREADS = 4  # images decode in parallel: PIL releases the GIL while it decodes and resizes


class Source:
    """The rows of one split: texts read without decoding images, images decoded on demand.

    `fingerprint` names the data set's content (what the code cache is keyed by, with the split,
    columns, row limit and image size in `identity`). `random_access` sources (Shapes, local
    files, downloaded hub sets) have a length and `image(i)`; a stream (`--streaming`) is read in
    order only. `skipped` counts rows left out: empty texts, and unreadable images once `chunks`
    has passed them."""

    random_access = True

    def __init__(self, data: str, split: str, image_size: int, num: int | None):
        self.data, self.split, self.image_size, self.num = data, split, image_size, num
        self.empty_texts = self.skipped = 0
        self.fingerprint = ""
        self.columns: tuple[str, ...] | None = None  # (image, text[, layout]) of a table or stream

    def identity(self) -> dict[str, Any]:
        return {"data": self.data, "fingerprint": self.fingerprint, "split": self.split, "num": self.num,
                "image_size": self.image_size, "columns": self.columns}

    def __len__(self) -> int:
        raise UserError(f"{self.data}: a streamed data set has no length; drop --streaming for this stage")

    def texts(self, i: int) -> Texts:
        raise NotImplementedError

    def image(self, i: int) -> np.ndarray | None:
        """(size, size, 3) uint8 RGB of row i, or None when it cannot be read."""
        raise NotImplementedError

    def scene(self, i: int) -> Any:
        return None

    def raw_images(self, n: int) -> Iterator[Any]:
        """The image values of the first `n` rows as stored (undecoded), for their headers."""
        raise NotImplementedError

    def example(self, i: int, texts: Texts | None = None, image: np.ndarray | None = None) -> Example | None:
        """Row i with its image (None when unreadable); `texts` and `image` when already read."""
        image = self.image(i) if image is None else image
        if image is None:
            return None
        return Example.of(image, texts or self.texts(i), self.scene(i))

    def examples(self) -> list[Example]:
        """Every readable row in memory: for small splits only (a test set, validation images)."""
        return [self.example(i, t, image) for chunk in self.chunks() for i, t, image in chunk]

    def iter_texts(self) -> Iterator[Texts]:
        for i in range(len(self)):
            yield self.texts(i)

    def chunks(self, size: int | None = None) -> Iterator[list[tuple[int, Texts, np.ndarray]]]:
        """Every readable row in order as (row, texts, image), `size` rows at a time; unreadable
        images are counted in `skipped`."""
        size, unreadable = size or CHUNK, 0
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            for start in range(0, len(self), size):
                rows = range(start, min(start + size, len(self)))
                images = list(pool.map(self.image, rows))
                unreadable += sum(image is None for image in images)
                self.skipped = self.empty_texts + unreadable
                yield [(i, self.texts(i), image) for i, image in zip(rows, images) if image is not None]


def world_fingerprint() -> str:
    """A hash of the Shapes package's source files (`ugen/shapes/*.py`): what the world's scenes,
    images and texts are a function of, besides the seed."""
    from ugen import shapes

    digest = hashlib.sha1()
    for path in sorted(Path(shapes.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class ShapesSource(Source):
    """The Shapes world: scenes and texts drawn up front (cheap), each image rendered when read."""

    def __init__(self, split: str, n: int, seed: int, image_size: int):
        from ugen import shapes  # imported here: other data must not need the Shapes renderer

        super().__init__("shapes", split, image_size, n)
        self._shapes = shapes
        self.rows = shapes.make_texts(split, n, seed)
        # The world's code is its data: a change to any module of the package is a new data set.
        self.fingerprint = f"seed {seed}, {world_fingerprint()}"

    def __len__(self) -> int:
        return len(self.rows)

    def texts(self, i: int) -> Texts:
        return self.rows[i][1]

    def image(self, i: int) -> np.ndarray:
        return self._shapes.render(self.rows[i][0], self.image_size)

    def scene(self, i: int) -> Any:
        return self.rows[i][0]


class TableSource(Source):
    """A `datasets.Dataset` (local files or a downloaded hub set), read by row index: Arrow is
    memory-mapped, so only the rows asked for are read, and images are decoded by us (one
    unreadable file is a skipped row, not an exception mid-pass)."""

    def __init__(self, data, split, rows, base_dir, image_column, text_column, image_size, num, layout_column=None):
        import datasets

        super().__init__(data, split, image_size, num)
        self.fingerprint = rows._fingerprint  # datasets hashes the data files (paths, sizes, times) into it
        if num is not None:
            rows = rows.select(range(min(num, len(rows))))
        if isinstance(rows.features[image_column], datasets.Image):
            rows = rows.cast_column(image_column, datasets.Image(decode=False))
        elif rows.features[image_column] == datasets.Value("string"):
            # Paths to image files (json/jsonl rows): datasets hashed the table, not the files it
            # names, so an image edited in place would reuse stale codes. Each file's size and
            # modification time go into the key (a stat per row; no image is read).
            self.fingerprint += "+files " + _files_fingerprint(rows.select_columns([image_column]), image_column, base_dir)
        self.base_dir, self.image_column, self.text_column = base_dir, image_column, text_column
        self.layout_column = layout_column
        self.columns = (image_column, text_column, *([layout_column] if layout_column else []))
        self.image_rows = rows.select_columns([image_column])
        self.text_rows = rows.select_columns([text_column, *([layout_column] if layout_column else [])])
        # One pass over the text column alone: the rows with a caption (no image is decoded).
        keep = [i for start, batch in enumerate(self.text_rows.iter(batch_size=4096))
                for i, value in enumerate(batch[text_column], start * 4096) if _texts(value)]
        self.index = np.asarray(keep, dtype=np.int64)
        self.empty_texts = self.skipped = len(rows) - len(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def texts(self, i: int) -> Texts:
        row = self.text_rows[int(self.index[i])]
        return _row_texts(row[self.text_column], row.get(self.layout_column) if self.layout_column else None)

    def image(self, i: int) -> np.ndarray | None:
        return _read_image(self.image_rows[int(self.index[i])][self.image_column], self.base_dir, self.image_size)

    def raw_images(self, n: int) -> Iterator[Any]:
        for i in range(min(n, len(self))):
            yield self.image_rows[int(self.index[i])][self.image_column]


class StreamSource(Source):
    """A streamed data set (`--streaming`): rows arrive in order and nothing is downloaded ahead,
    so it can be encoded into the code cache and shuffled through a buffer, but not indexed."""

    random_access = False

    def __init__(self, data, split, rows, base_dir, image_column, text_column, image_size, num, layout_column=None):
        super().__init__(data, split, image_size, num)
        self.fingerprint = f"stream of {data}"  # a stream has no content hash: its name stands for it
        self.rows, self.base_dir, self.image_column, self.text_column = rows, base_dir, image_column, text_column
        self.layout_column = layout_column
        self.columns = (image_column, text_column, *([layout_column] if layout_column else []))

    def _rows(self) -> Iterator[tuple[Texts | None, Any]]:
        rows = self.rows if self.num is None else self.rows.take(self.num)
        for row in rows:
            texts = _texts(row[self.text_column])
            layout = row.get(self.layout_column) if self.layout_column else None
            yield (_row_texts(texts, layout) if texts else None), row[self.image_column]

    def iter_texts(self) -> Iterator[Texts]:
        return (t for t, _ in self._rows() if t is not None)

    def raw_images(self, n: int) -> Iterator[Any]:
        for k, (_, value) in enumerate(self._rows()):
            if k == n:
                return
            yield value

    def chunks(self, size: int | None = None) -> Iterator[list[tuple[int, Texts, np.ndarray]]]:
        size = size or CHUNK
        self.skipped, position, chunk = 0, 0, []
        for texts, value in self._rows():
            image = _read_image(value, self.base_dir, self.image_size) if texts else None
            if image is None:
                self.skipped += 1
                continue
            chunk.append((position, texts, image))
            position += 1
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def image_batches(source: Source, batch_size: int, generator: torch.Generator, shuffle_buffer: int = 2048,
                  ) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) uint8 batches of images drawn at random, without end (the VQ tokenizer's diet).

    A random-access source is indexed by `generator`'s draws, an unreadable image replaced by a new
    draw; a stream is read in order through a shuffle buffer of `shuffle_buffer` images, epoch
    after epoch."""
    def stack(images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    if source.random_access:
        n = len(source)
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            while True:
                images = list(pool.map(source.image, torch.randint(n, (batch_size,), generator=generator).tolist()))
                for k in range(len(images)):
                    for _ in range(100):
                        if images[k] is not None:
                            break
                        images[k] = source.image(int(torch.randint(n, (1,), generator=generator)))
                    else:
                        raise UserError(f"{source.data}: 100 images drawn in a row could not be read")
                yield stack(images)
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    buffer: list[np.ndarray] = []
    while True:
        read = 0
        for chunk in source.chunks():
            read += len(chunk)
            for _, _, image in chunk:
                buffer.append(image)
                if len(buffer) >= shuffle_buffer + batch_size:
                    picked = set(rng.choice(len(buffer), batch_size, replace=False).tolist())
                    yield stack([buffer[i] for i in picked])
                    buffer = [image for i, image in enumerate(buffer) if i not in picked]
        if not read:
            raise UserError(f"{source.data}: the {source.split} stream has no readable images")
        if len(buffer) >= batch_size:  # a stream shorter than the buffer: draw from what it holds
            yield stack([buffer[i] for i in rng.choice(len(buffer), batch_size, replace=False)])


def _open_split(data: str, split: str, streaming: bool, cache_dir: str | None):
    """The rows of `split` (a Dataset, or an IterableDataset when streaming), the directory that
    relative image paths are resolved against, and the hub revision a stream reads (else None)."""
    import datasets

    path = Path(data).expanduser()
    revision = None
    if path.exists():
        base_dir = path if path.is_dir() else path.parent
        loaded = _load_local(path, streaming, cache_dir)
    elif _HUB_NAME.match(data) and not path.suffix:
        base_dir = None
        try:
            # A stream has no content hash to key the code cache by: it reads one pinned commit of
            # the hub repository, and the cache is keyed by that commit, so a set updated upstream
            # is a new cache, never stale codes. A downloaded set is hashed by datasets itself.
            revision = _hub_revision(data) if streaming else None
            loaded = datasets.load_dataset(data, cache_dir=cache_dir, streaming=streaming, revision=revision)
        except (FileNotFoundError, ConnectionError, ValueError) as err:
            raise UserError(f"--data {data}: no such local path, and no hub data set could be loaded "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    else:
        raise UserError(f"--data {data}: no such file or directory")
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        loaded = {"train": loaded}
    return _pick_split(loaded, split, data), base_dir, revision


def _hub_revision(name: str) -> str:
    """The commit a hub data set's main branch points at now."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(name).sha
    except Exception as err:  # offline, no such repository, no access: hub_hub's errors have no common base
        raise UserError(f"--data {name}: no such local path, and the hub could not say which revision to stream "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


def _load_local(path: Path, streaming: bool, cache_dir: str | None):
    import datasets

    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        suffixes = {p.suffix.lower() for p in files}
        if ".parquet" in suffixes:
            kind = "parquet"
        elif any(p.name.startswith("metadata.") for p in files):
            kind = "imagefolder"
        elif suffixes & {".json", ".jsonl"}:
            kind = "json"
        else:
            raise UserError(f"--data {path}: a directory needs metadata.jsonl (imagefolder), parquet or json files")
        return datasets.load_dataset(kind, data_dir=str(path), cache_dir=cache_dir, streaming=streaming)
    kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"--data {path}: expected a .parquet, .json or .jsonl file or a directory")
    try:
        return datasets.load_dataset(kind, data_files=str(path), cache_dir=cache_dir, streaming=streaming)
    except datasets.exceptions.DatasetGenerationError as err:
        raise UserError(f"--data {path}: could not be read as {kind} ({err.__cause__ or err})") from err


def _pick_split(loaded, split: str, name: str):
    """The data set's own split if it has one, else a deterministic carve-out of its train split.

    Rows are assigned by a stable hash of their index (5% test, 5% val, 90% train), and only splits
    the data set lacks are carved, so the three splits never share a row. A stream is carved the
    same way as its rows go by."""
    import datasets

    own = {s: next((a for a in _SPLIT_ALIASES[s] if a in loaded), None) for s in SPLITS}
    missing = [s for s in ("test", "validation") if own[s] is None]
    if own[split] is not None and (split != "train" or not missing):
        return loaded[own[split]]
    if own["train"] is None:
        raise UserError(f"{name}: no train split to carve {split} from (splits: {', '.join(loaded)})")
    source = loaded[own["train"]]

    def keep(bucket: np.ndarray) -> np.ndarray:
        out = np.ones(len(bucket), dtype=bool) if split == "train" else np.zeros(len(bucket), dtype=bool)
        low = 0
        for carved in missing:
            in_carved = (bucket >= low) & (bucket < low + _CARVE_PERCENT[carved])
            low += _CARVE_PERCENT[carved]
            if carved == split:
                out |= in_carved
            elif split == "train":
                out &= ~in_carved
        return out

    if isinstance(source, datasets.IterableDataset):
        return source.filter(lambda _, index: bool(keep(_stable_percent(np.array([index])))[0]), with_indices=True)
    return source.select(np.flatnonzero(keep(_stable_percent(np.arange(len(source))))))


def _stable_percent(index: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random bucket in [0, 100) for each row index (splitmix64 of the index)."""
    z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(100)).astype(np.int64)


def _row_texts(value: Any, layout: Any = None) -> Texts:
    """A row's captions as Texts: the first is the caption target and the passage, all are prompts;
    its layout, a non-empty string, or None."""
    texts = _texts(value)
    layout = layout.strip() if isinstance(layout, str) and layout.strip() else None
    return Texts(caption=texts[0], prompts=texts, passage=texts[0], layout=layout)


def _texts(value: Any) -> list[str]:
    """The non-empty captions of a row: a string, or a list of them (several captions per image)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _files_fingerprint(rows, column: str, base_dir: Path | None) -> str:
    """A hash of the path, size and modification time of every file a column of paths names (a
    missing file hashes as missing: it becomes a skipped row, and its arrival is a new key)."""
    digest = hashlib.sha1()
    for batch in rows.iter(batch_size=4096):
        for value in batch[column]:
            path = Path(value) if isinstance(value, str) and value else None
            if path is not None and not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                stat = path.stat() if path is not None else None
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode() if stat else f"{path}\0-\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def _read_image(value: Any, base_dir: Path | None, size: int) -> np.ndarray | None:
    """(size, size, 3) uint8 RGB, or None when the image cannot be read."""
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        else:
            if isinstance(value, dict):
                raw, path = value.get("bytes"), value.get("path")
            elif isinstance(value, str):
                raw, path = None, value
            else:
                return None
            if raw is not None:
                image = PIL.Image.open(io.BytesIO(raw))
            elif path:
                path = Path(path)
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
                image = PIL.Image.open(path)
            else:
                return None
        image.load()
        return square_rgb(image, size)
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        return None


def square_rgb(image: PIL.Image.Image, size: int) -> np.ndarray:
    """Any PIL image as (size, size, 3) uint8 RGB: transparency over white, centre-cropped square."""
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # High-bit-depth greyscale: scale to 8 bits instead of letting convert() clip it.
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.max() > 255 else 255.0
        image = PIL.Image.fromarray((values * (255.0 / top)).clip(0, 255).astype(np.uint8))
    if image.mode == "P" or image.mode in ("LA", "PA", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(white, image)
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), PIL.Image.Resampling.LANCZOS if side > size else PIL.Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).copy()
