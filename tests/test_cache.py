"""The code cache: built in chunks from rows read on demand, equal to encoding the images directly,
keyed by everything its contents depend on, safe against a killed build; streams read the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ugen.data import load_examples, open_source
from ugen.data import sources as data_sources
from ugen.data.cache import load_cache
from ugen.data.sources import image_batches
from ugen.errors import UserError
from ugen.text_tokenizer import train_text_tokenizer
from ugen.image_tokenizers import UgenVQ, VQConfig, encode_images

SIZE = 16


def _write_folder(root: Path, n: int = 40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"photo {i} of a thing", "alt": f"other words {i}"})
    (root / "broken.png").write_bytes(b"not a png")
    rows.append({"file_name": "broken.png", "text": "unreadable"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """A random VQ tokenizer at 16 px and a text tokenizer trained on the captions."""
    import torch

    torch.manual_seed(0)
    vq = UgenVQ(VQConfig(image_size=SIZE, downsample=8, levels=[4, 4])).eval()
    texts = [f"photo {i} of a thing" for i in range(40)] + [f"other words {i}" for i in range(40)]
    text = train_text_tokenizer(texts, tmp_path_factory.mktemp("text") / "text.model", 300)
    return vq, text


@pytest.fixture()
def folder(tmp_path) -> Path:
    return _write_folder(tmp_path / "data")


def _open(folder: Path, split: str = "train", **kwargs):
    return open_source(str(folder), split, image_size=SIZE, cache_dir=str(folder.parent / "hf"), **kwargs)


def test_cache_equals_encoding_the_images_directly(folder, tmp_path, tools, monkeypatch):
    vq, text = tools
    monkeypatch.setattr(data_sources, "CHUNK", 5)  # several chunks, the last one short
    cache = load_cache(_open(folder), vq, text, max_text=4, root=tmp_path / "cache")
    # Independently: every readable train example decoded in memory, encoded in one call.
    examples, skipped = load_examples(str(folder), "train", image_size=SIZE, cache_dir=str(folder.parent / "hf"))
    assert len(cache) == len(examples) and cache.meta["skipped"] == skipped
    assert np.array_equal(np.asarray(cache.codes), encode_images(vq, np.stack([e.image for e in examples])))
    for i, example in enumerate(examples):
        row = cache[i]
        assert row.caption == text.encode(example.caption)[:4]  # clipped to max_text
        assert row.passage == text.encode(example.caption)[:8]  # the passage to twice that
        assert row.prompts == [text.encode(example.caption)[:4]] and row.qa == [] and row.layout is None
    assert cache.layouts == 0
    counts = np.bincount(np.asarray(cache.codes).ravel(), minlength=vq.num_codes)
    assert np.array_equal(cache.code_counts, counts)


def test_cache_rows_read_back_their_images(folder, tmp_path, tools):
    vq, text = tools
    source = _open(folder)
    cache = load_cache(source, vq, text, max_text=8, root=tmp_path / "cache")
    for i in (0, len(cache) - 1):
        image = source.image(int(cache.rows[i]))
        assert np.array_equal(encode_images(vq, image[None])[0], cache.codes[i])


def test_shapes_cache_keeps_questions_passages_and_layouts(tmp_path, tools):
    from ugen import shapes

    vq, text = tools
    source = open_source("shapes", "validation", image_size=SIZE, num=6, seed=3)
    cache = load_cache(source, vq, text, max_text=16, root=tmp_path / "cache")
    scenes = shapes.make_texts("validation", 6, seed=3)
    assert len(cache) == 6 and len(cache.with_qa) == sum(bool(t.qa) for _, t in scenes)
    for row, (scene, t) in zip((cache[i] for i in range(6)), scenes):
        assert row.passage == text.encode(t.passage)[:32]
        assert row.prompts == [text.encode(p)[:16] for p in t.prompts]
        assert row.qa == [(text.encode(q)[:16], text.encode(a)[:16]) for q, a, _ in t.qa]
        assert row.layout == text.encode(t.layout)[:16]
    assert cache.layouts == 6
    assert np.array_equal(cache.codes[2], encode_images(vq, shapes.render(scenes[2][0], SIZE)[None])[0])


def test_cache_is_reused_and_keyed_by_what_it_depends_on(folder, tmp_path, tools):
    vq, text = tools
    root = tmp_path / "cache"
    first = load_cache(_open(folder), vq, text, 8, root).directory
    assert load_cache(_open(folder), vq, text, 8, root).directory == first  # reused, not rebuilt
    others = {
        "another text column": load_cache(_open(folder, text_column="alt"), vq, text, 8, root).directory,
        "a row limit": load_cache(_open(folder, num=10), vq, text, 8, root).directory,
        "another split": load_cache(_open(folder, "validation"), vq, text, 8, root).directory,
        "another text limit": load_cache(_open(folder), vq, text, 9, root).directory,
    }
    retrained = UgenVQ(vq.config).eval()
    retrained.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in vq.state_dict().items()})
    others["a retrained tokenizer"] = load_cache(_open(folder), retrained, text, 8, root).directory
    assert len({first, *others.values()}) == len(others) + 1, others
    with pytest.raises(UserError, match="16 px tokenizer"):
        load_cache(open_source(str(folder), "train", image_size=8, cache_dir=str(folder.parent / "hf")), vq, text, 8, root)
    # Edited in place: a caption changes, and the cache built from the old file is not used.
    meta = folder / "metadata.jsonl"
    meta.write_text(meta.read_text().replace("photo 3 of", "picture 3 of"))
    edited = load_cache(_open(folder), vq, text, 8, root)
    assert edited.directory != first


def test_a_killed_build_leaves_nothing_that_reads_as_a_cache(folder, tmp_path, tools, monkeypatch):
    vq, text = tools
    root = tmp_path / "cache"
    monkeypatch.setattr(data_sources, "CHUNK", 4)
    calls = {"n": 0}
    real = data_sources.TableSource.image

    def dies_midway(self, i):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt  # what a kill looks like from inside
        return real(self, i)

    monkeypatch.setattr(data_sources.TableSource, "image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load_cache(_open(folder), vq, text, 8, root)
    assert not [p for p in root.iterdir() if p.is_dir() and not p.name.startswith("tmp-")]
    monkeypatch.setattr(data_sources.TableSource, "image", real)
    cache = load_cache(_open(folder), vq, text, 8, root)
    assert len(cache) == len(_open(folder)) - 1  # the broken file
    assert not list(root.glob("tmp-*"))  # the killed build's leftovers are gone


def test_texts_are_read_without_decoding_images(folder, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(data_sources, "_read_image", no_decoding)
    source = _open(folder)
    texts = list(source.iter_texts())
    assert len(texts) == len(source) and all(t.caption.startswith(("photo", "unreadable")) for t in texts)


def test_a_stream_gives_the_rows_and_codes_of_the_table(tmp_path, tools):
    import datasets

    vq, text = tools
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)) for _ in range(60)]
    rows = datasets.Dataset.from_dict({"image": images, "text": [f"picture {i}" for i in range(60)]},
                                      features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}))
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    for split in ("train", "test"):
        table = open_source(str(tmp_path / "rows.parquet"), split, image_size=SIZE, cache_dir=str(tmp_path / "hf"))
        stream = open_source(str(tmp_path / "rows.parquet"), split, image_size=SIZE, streaming=True)
        assert not stream.random_access
        assert [t.caption for t in stream.iter_texts()] == [table.texts(i).caption for i in range(len(table))]
        from_table = load_cache(table, vq, text, 8, tmp_path / "c")
        from_stream = load_cache(stream, vq, text, 8, tmp_path / "c")
        assert from_stream.directory != from_table.directory
        assert np.array_equal(np.asarray(from_stream.codes), np.asarray(from_table.codes))


def test_image_batches_draw_from_the_data_whether_indexed_or_streamed(tmp_path):
    import torch

    pixels = {i: np.full((SIZE, SIZE, 3), i * 4, dtype=np.uint8) for i in range(30)}
    folder = tmp_path / "flat"
    folder.mkdir()
    for i, image in pixels.items():
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"grey {i}"}) + "\n"
                                                   for i in pixels))
    for streaming in (False, True):
        source = open_source(str(folder), "train", image_size=SIZE, streaming=streaming, cache_dir=str(tmp_path / "hf"))
        batches = image_batches(source, 4, torch.Generator().manual_seed(0), shuffle_buffer=8)
        seen = set()
        for _ in range(20):
            batch = next(batches)
            assert batch.shape == (4, 3, SIZE, SIZE) and batch.dtype == torch.uint8
            values = batch.flatten(1)
            assert bool((values == values[:, :1]).all())  # each image is one whole grey from the data
            seen |= {int(v) for v in values[:, 0]}
        assert seen <= {i * 4 for i in pixels} and len(seen) > 10


def test_the_shapes_cache_key_follows_every_module_of_the_world(monkeypatch):
    """An edit to any module of ugen/shapes/ (here texts.py, where the captions come from) is a new
    Shapes data set, so no cache of the old world's texts is reused."""
    from pathlib import Path

    from ugen.data import sources

    before = sources.world_fingerprint()
    read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read(self) + (b"# edited" if self.name == "texts.py" else b""))
    assert sources.world_fingerprint() != before
    edited = open_source("shapes", "validation", image_size=SIZE, num=2, seed=0).identity()["fingerprint"]
    assert edited.endswith(sources.world_fingerprint()) and not edited.endswith(before)


def test_an_empty_split_is_a_clear_error_that_leaves_no_cache(folder, tmp_path, tools):
    vq, text = tools
    root = tmp_path / "cache"
    for _ in range(2):  # the second run meets the same clear error, not a broken cache of the first
        with pytest.raises(UserError, match="validation split has no readable examples"):
            load_cache(_open(folder, "validation", num=0), vq, text, 8, root)
        assert not [p for p in root.iterdir() if p.is_dir()]  # neither a cache nor a half-built one


def test_a_json_of_image_paths_is_keyed_by_the_files_it_names(tmp_path, tools):
    vq, text = tools
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
        rows.append({"image": f"{i}.png", "text": f"photo {i} of a thing"})
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tmp_path / "cache"

    def build():
        return load_cache(_open(data / "rows.jsonl"), vq, text, 8, root)

    first = build()
    assert build().directory == first.directory  # untouched files: the same cache
    for i in range(12):  # every image edited in place (same paths, same json)
        Image.fromarray(np.full((16, 16, 3), 20 * i, dtype=np.uint8)).save(data / f"{i}.png")
    edited = build()
    assert edited.directory != first.directory  # the codes of the old pixels are not reused
    source = _open(data / "rows.jsonl")
    assert np.array_equal(np.asarray(edited.codes[0]), encode_images(vq, source.image(int(edited.rows[0]))[None])[0])


def test_a_hub_stream_reads_and_is_keyed_by_one_pinned_revision(tmp_path, monkeypatch):
    import datasets

    rows = datasets.Dataset.from_dict({"image": ["a.png"] * 40, "text": [f"picture {i}" for i in range(40)]})
    rows.to_json(str(tmp_path / "rows.jsonl"))
    real_load = datasets.load_dataset
    asked = []

    def hub(name, **kwargs):  # the hub, played by a local file: which revision was asked for
        asked.append(kwargs.get("revision"))
        return real_load("json", data_files=str(tmp_path / "rows.jsonl"), streaming=kwargs["streaming"])

    monkeypatch.setattr(datasets, "load_dataset", hub)
    keys = {}
    for commit in ("1111aaaa", "2222bbbb"):  # the set's main branch moves between two runs
        monkeypatch.setattr(data_sources, "_hub_revision", lambda name, commit=commit: commit)
        keys[commit] = open_source("someone/shapes-like", "train", image_size=SIZE, streaming=True).identity()
    assert asked == ["1111aaaa", "2222bbbb"]
    assert keys["1111aaaa"]["fingerprint"] == "stream of someone/shapes-like at revision 1111aaaa"
    assert keys["1111aaaa"] != keys["2222bbbb"]


def test_codebooks_past_32768_codes_are_cached_as_int32(folder, tmp_path):
    import torch

    torch.manual_seed(0)
    vq = UgenVQ(VQConfig(image_size=SIZE, downsample=8, levels=[8, 8, 8, 8, 8, 4])).eval()  # 131,072 codes (IBQ's)
    text = train_text_tokenizer([f"photo {i} of a thing" for i in range(40)], tmp_path / "text.model", 300)
    cache = load_cache(_open(folder), vq, text, 8, tmp_path / "cache")
    source = _open(folder)
    direct = encode_images(vq, np.stack([source.image(int(r)) for r in cache.rows]))
    assert cache.codes.dtype == np.int32 and direct.dtype == np.int32
    assert np.array_equal(np.asarray(cache.codes), direct)
    assert direct.max() > 32767  # ids int16 would have wrapped
    assert len(cache.code_counts) == 131072
