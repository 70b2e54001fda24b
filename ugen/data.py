"""Examples every training stage consumes, whichever data set they come from.

The Shapes world (`ugen.shapes`) and any image-caption data set that `datasets` can open are both
turned into a list of `Example`s at the VQ tokenizer's resolution, so that the stages downstream
never need to know where the data came from.
"""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from tqdm.auto import tqdm

from ugen.errors import UserError

if TYPE_CHECKING:
    import datasets


@dataclass
class Example:
    """One image with the texts that go with it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB at the data set's resolution
    caption: str  # target of the caption task (Shapes: the long dense caption)
    prompts: list[str]  # conditions for text-to-image (Shapes: the short and the long caption)
    qa: list[tuple[str, str, str]] = field(default_factory=list)  # (question, answer, question type)
    passage: str | None = None  # text-only passage about the scene
    scene: Any = None  # ugen.shapes.Scene for Shapes, None for other data


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
                            "training the tokenizer, 48 for shapes and 256 for other data)")


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
    return group


DATA_FLAGS = ("data", "image_column", "text_column")


def data_of_model(args: argparse.Namespace, meta: dict[str, Any]) -> None:
    """Fill the data flags left unset (None) with those the model was pretrained on (`meta` is its
    ugen.json), so that RL and the eval read a model's own data unless told otherwise."""
    trained_on = meta.get("pretrain", {})
    for name, fallback in zip(DATA_FLAGS, ("shapes", "image", "text")):
        if getattr(args, name) is None:
            setattr(args, name, trained_on.get(name, fallback))


def default_image_size(data: str) -> int:
    """The resolution a new VQ tokenizer is trained at: the Shapes world's own, or LlamaGen's 256 px."""
    if data == "shapes":
        from ugen import shapes

        return shapes.IMAGE_SIZE
    return 256


def load_split(args: argparse.Namespace, split: str, cache_dir: str | None = None) -> tuple[list[Example], int]:
    """`load_examples` with the flags of `add_data_args`: --num-train for train, --num-val otherwise."""
    num = args.num_train if split == "train" else args.num_val
    return load_examples(args.data, split, image_column=args.image_column, text_column=args.text_column,
                         image_size=args.image_size or default_image_size(args.data), num=num, seed=args.seed,
                         cache_dir=cache_dir)


def load_examples(
    data: str,
    split: str,
    *,
    image_column: str = "image",
    text_column: str = "text",
    image_size: int = 48,
    num: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
) -> tuple[list[Example], int]:
    """Examples of one split ("train", "validation" or "test") and the number of rows skipped.

    Shapes is generated from `seed`; other data is read with `datasets` and its first `num` rows of
    the split are used (all when `num` is None). A row whose image cannot be read or whose text is
    empty is skipped and counted rather than aborting the pass: the caller reports the count.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if num is not None and num < 0:
        raise UserError(f"the number of examples must be >= 0, not {num}")
    if data == "shapes":
        from ugen import shapes  # imported here: BYO data must not need the Shapes renderer

        return shapes.make_examples(split, 20000 if num is None else num, seed=seed, image_size=image_size), 0

    import datasets  # imported here: it is slow to import and Shapes does not need it

    rows, base_dir = _open_split(data, split, cache_dir)
    for column in (image_column, text_column):
        if column not in rows.column_names:
            raise UserError(f"{data}: no column {column!r}; available columns: {', '.join(rows.column_names)}")
    rows = rows.select_columns([image_column, text_column])
    if isinstance(rows.features[image_column], datasets.Image):
        # Decode ourselves: one unreadable file must be a skipped row, not an exception mid-pass.
        rows = rows.cast_column(image_column, datasets.Image(decode=False))
    if num is not None:
        rows = rows.select(range(min(num, len(rows))))

    examples, skipped = [], 0
    for row in tqdm(rows, desc=f"reading {split} images", unit="img", leave=False):
        texts = _texts(row[text_column])
        image = _read_image(row[image_column], base_dir, image_size) if texts else None
        if image is None:
            skipped += 1
            continue
        examples.append(Example(image=image, caption=texts[0], prompts=texts, passage=texts[0]))
    return examples, skipped


def _open_split(data: str, split: str, cache_dir: str | None) -> tuple[datasets.Dataset, Path | None]:
    """The rows of `split` and the directory that relative image paths are resolved against."""
    import datasets

    path = Path(data).expanduser()
    if path.exists():
        base_dir = path if path.is_dir() else path.parent
        loaded = _load_local(path, cache_dir)
    elif _HUB_NAME.match(data) and not path.suffix:
        base_dir = None
        try:
            loaded = datasets.load_dataset(data, cache_dir=cache_dir)
        except (FileNotFoundError, ConnectionError, ValueError) as err:
            raise UserError(f"--data {data}: no such local path, and no hub data set could be loaded "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    else:
        raise UserError(f"--data {data}: no such file or directory")
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return _pick_split(loaded, split, data), base_dir


def _load_local(path: Path, cache_dir: str | None) -> datasets.DatasetDict:
    import datasets

    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        suffixes = {p.suffix.lower() for p in files}
        if ".parquet" in suffixes:
            return datasets.load_dataset("parquet", data_dir=str(path), cache_dir=cache_dir)
        if any(p.name.startswith("metadata.") for p in files):
            return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
        if suffixes & {".json", ".jsonl"}:
            return datasets.load_dataset("json", data_dir=str(path), cache_dir=cache_dir)
        raise UserError(f"--data {path}: a directory needs metadata.jsonl (imagefolder), parquet or json files")
    kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"--data {path}: expected a .parquet, .json or .jsonl file or a directory")
    try:
        return datasets.load_dataset(kind, data_files=str(path), cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as err:
        raise UserError(f"--data {path}: could not be read as {kind} ({err.__cause__ or err})") from err


def _pick_split(loaded: datasets.DatasetDict, split: str, name: str) -> datasets.Dataset:
    """The data set's own split if it has one, else a deterministic carve-out of its train split.

    Rows are assigned by a stable hash of their index (5% test, 5% val, 90% train), and only splits
    the data set lacks are carved, so the three splits never share a row.
    """
    own = {s: next((a for a in _SPLIT_ALIASES[s] if a in loaded), None) for s in SPLITS}
    missing = [s for s in ("test", "validation") if own[s] is None]
    if own[split] is not None and (split != "train" or not missing):
        return loaded[own[split]]
    if own["train"] is None:
        raise UserError(f"{name}: no train split to carve {split} from (splits: {', '.join(loaded)})")
    source = loaded[own["train"]]
    bucket = _stable_percent(len(source))
    keep = np.ones(len(source), dtype=bool) if split == "train" else np.zeros(len(source), dtype=bool)
    low = 0
    for carved in missing:
        in_carved = (bucket >= low) & (bucket < low + _CARVE_PERCENT[carved])
        low += _CARVE_PERCENT[carved]
        if carved == split:
            keep |= in_carved
        elif split == "train":
            keep &= ~in_carved
    return source.select(np.flatnonzero(keep))


def _stable_percent(n: int) -> np.ndarray:
    """A fixed pseudo-random bucket in [0, 100) for each row index (splitmix64 of the index)."""
    z = np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(100)).astype(np.int64)


def _texts(value: Any) -> list[str]:
    """The non-empty captions of a row: a string, or a list of them (several captions per image)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


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
