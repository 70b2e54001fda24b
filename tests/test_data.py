"""Bring-your-own data: every image mode reads, bad rows are skipped and counted, splits are disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ugen.data import load_examples, square_rgb
from ugen.errors import UserError


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    if mode == "P":
        return image.quantize(16)
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(128)
        return image
    return image.convert(mode)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An imagefolder of 12 rows: mixed modes, sizes and formats, one corrupt file, one empty text."""
    root = tmp_path_factory.mktemp("byo")
    specs = [("RGB", (48, 48), "png"), ("RGBA", (64, 64), "png"), ("L", (32, 32), "png"),
             ("P", (50, 50), "png"), ("RGB", (100, 60), "jpg"), ("L", (60, 100), "jpg"),
             ("LA", (40, 40), "png"), ("1", (48, 48), "png"), ("CMYK", (30, 30), "jpg"),
             ("RGB", (200, 200), "png")]
    rows = []
    for i, (mode, size, ext) in enumerate(specs):
        name = f"img{i}.{ext}"
        _image(mode, size, i).save(root / name)
        rows.append({"file_name": name, "text": f"picture number {i}"})
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    rows.append({"file_name": "corrupt.png", "text": "a broken file"})
    _image("RGB", (48, 48), 99).save(root / "untitled.png")
    rows.append({"file_name": "untitled.png", "text": "   "})
    with open(root / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return root


def _all_splits(data, cache, **kwargs):
    return {split: load_examples(data, split, cache_dir=str(cache), **kwargs) for split in ("train", "validation", "test")}


def test_imagefolder_reads_every_mode_and_counts_skipped_rows(folder, tmp_path):
    splits = _all_splits(str(folder), tmp_path)
    examples = [ex for exs, _ in splits.values() for ex in exs]
    assert len(examples) == 10
    assert sum(skipped for _, skipped in splits.values()) == 2
    for ex in examples:
        assert ex.image.shape == (48, 48, 3) and ex.image.dtype == np.uint8
        assert ex.caption.startswith("picture number") and ex.prompts == [ex.caption]
        assert ex.qa == [] and ex.passage == ex.caption and ex.scene is None


def test_carved_splits_are_disjoint_and_stable(folder, tmp_path):
    first = _all_splits(str(folder), tmp_path, image_size=16)
    captions = {split: {ex.caption for ex in exs} for split, (exs, _) in first.items()}
    assert not captions["train"] & captions["validation"]
    assert not captions["train"] & captions["test"]
    assert not captions["validation"] & captions["test"]
    again = load_examples(str(folder), "train", image_size=16, cache_dir=str(tmp_path))[0]
    assert [ex.caption for ex in again] == [ex.caption for ex in first["train"][0]]
    assert all(ex.image.shape == (16, 16, 3) for ex in again)


def test_num_limits_rows(folder, tmp_path):
    examples, _ = load_examples(str(folder), "train", num=3, cache_dir=str(tmp_path))
    assert len(examples) <= 3


def test_jsonl_with_custom_columns_and_relative_paths(folder, tmp_path):
    (tmp_path / "pics").mkdir()
    rows = []
    for i in range(6):
        _image("RGB", (70, 50), i).save(tmp_path / "pics" / f"{i}.png")
        rows.append({"img": f"pics/{i}.png", "caption": f"caption {i}"})
    rows.append({"img": "pics/missing.png", "caption": "gone"})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = _all_splits(str(data), tmp_path / "cache", image_column="img", text_column="caption")
    assert sum(len(exs) for exs, _ in splits.values()) == 6
    assert sum(skipped for _, skipped in splits.values()) == 1
    assert all(ex.image.shape == (48, 48, 3) for exs, _ in splits.values() for ex in exs)


def test_parquet_with_image_bytes(tmp_path):
    import datasets

    images = [_image("RGB", (30, 40), i) for i in range(5)]
    ds = datasets.Dataset.from_dict({"picture": images, "text": [f"t{i}" for i in range(5)]},
                                    features=datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    splits = _all_splits(str(tmp_path / "rows.parquet"), tmp_path / "cache", image_column="picture")
    assert sum(len(exs) for exs, _ in splits.values()) == 5


def test_bad_column_names_the_available_ones(folder, tmp_path):
    with pytest.raises(UserError, match="available columns: image, text"):
        load_examples(str(folder), "train", image_column="photo", cache_dir=str(tmp_path))
    with pytest.raises(UserError, match="available columns"):
        load_examples(str(folder), "train", text_column="caption", cache_dir=str(tmp_path))


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_examples(str(tmp_path / "nowhere"), "train")


def test_square_rgb_crops_the_centre():
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # only the centre square is white
    out = square_rgb(Image.fromarray(wide), 10)
    assert out.shape == (10, 10, 3) and out.min() == 255


def test_carving_is_90_5_5_and_keeps_existing_splits():
    import datasets

    from ugen.data.sources import _pick_split

    rows = datasets.Dataset.from_dict({"i": list(range(2000))})
    only_train = datasets.DatasetDict({"train": rows})
    parts = {s: set(_pick_split(only_train, s, "x")["i"]) for s in ("train", "validation", "test")}
    assert set().union(*parts.values()) == set(range(2000))
    assert sum(len(p) for p in parts.values()) == 2000  # no row in two splits
    assert 60 < len(parts["validation"]) < 140 and 60 < len(parts["test"]) < 140
    with_test = datasets.DatasetDict({"train": rows, "test": datasets.Dataset.from_dict({"i": [-1]})})
    assert _pick_split(with_test, "test", "x")["i"] == [-1]
    train, val = set(_pick_split(with_test, "train", "x")["i"]), set(_pick_split(with_test, "validation", "x")["i"])
    assert not train & val and len(train) + len(val) == 2000


def test_shapes_is_the_default_data():
    examples, skipped = load_examples("shapes", "validation", num=3)
    assert len(examples) == 3 and skipped == 0
    assert examples[0].image.shape == (48, 48, 3) and examples[0].scene is not None


def _folder_of(root: Path, sizes: list[tuple[int, int]]) -> Path:
    root.mkdir(parents=True)
    for i, size in enumerate(sizes):
        _image("RGB", size, i).save(root / f"{i}.png")
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"picture {i}"}) + "\n"
                                                 for i in range(len(sizes))))
    return root


def test_a_new_image_tokenizer_trains_at_the_datas_own_size(tmp_path, capsys):
    from conftest import _script

    train_vq = _script("tokenizers/train_vq.py")

    def size_of(data: Path | str, *flags: str) -> tuple[int, int]:
        args = train_vq.parse_args(["--data", str(data), "--out", str(tmp_path / "vq"), *flags])
        return args.image_size, args.downsample

    # 48 px scans (a few odd ones among them) stay 48 px, a 6x6 grid, instead of being upscaled to 256
    scans = _folder_of(tmp_path / "scans", [(48, 48)] * 30 + [(60, 40)] * 5)
    assert size_of(scans) == (48, 8)
    assert "48 px on their longer side" in capsys.readouterr().out
    assert size_of(_folder_of(tmp_path / "odd", [(37, 30)] * 20)) == (40, 8)  # rounded to the factor
    assert size_of(_folder_of(tmp_path / "photos", [(640, 480)] * 20)) == (256, 16)  # capped
    assert size_of(_folder_of(tmp_path / "mid", [(210, 150)] * 20)) == (208, 16)  # a multiple of 16 past 128
    assert size_of(scans, "--image-size", "64") == (64, 8)  # the flag decides
    assert size_of("shapes") == (48, 8)
