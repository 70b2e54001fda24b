"""The eval driver end to end on the tiny model: every category with sample counts, and a report."""

import json
from statistics import mean

import pytest

import ugen
from conftest import run_script
from ugen import geneval
from ugen.api import GENERATE_DEFAULTS
from ugen.sampling import SamplingParams
from ugen.shapes import make_examples, parse


def test_evaluate_writes_results_and_report(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    result = run_script("eval/evaluate.py", "--model", str(tiny_model_dir), "--num-test", "20",
                        "--images-per-prompt", "1", "--num-reconstruct", "8", "--out", str(out))
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"summary", "judge_sanity", "generation", "interleaved", "understanding", "reconstruction", "text",
                            "tokenizer"}
    interleaved = results.pop("interleaved")  # a mean count, and NaN where no image was drawn mid-text
    assert interleaved["images_per_sample"]["n"] == 6 * 10  # ten GenEval prompts of each task
    matched = interleaved["image_matches_sentence"]
    assert (matched["n"] == 0) == (matched["score"] != matched["score"]) and (matched["n"] == 0 or 0 <= matched["score"] <= 1)
    assert all(r["score"] >= 0.99 for r in results["judge_sanity"].values())
    tasks = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    gen = results["generation"]
    assert all(gen[t]["n"] >= 50 for t in tasks)
    assert abs(gen["overall"]["score"] - sum(gen[t]["score"] for t in tasks) / 6) < 1e-9
    for rows in results.values():
        for name, row in rows.items():
            assert row["n"] > 0, name
            assert name in ("psnr_db", "bits_per_byte", "caption_cider") or 0.0 <= row["score"] <= 1.0, (name, row)
    und, summary = results["understanding"], results["summary"]
    assert summary["text"] == results["text"]["qa"] and summary["image_gen"] == gen["overall"]
    assert summary["image_und"]["score"] == (und["caption_f1"]["score"] + und["vqa"]["score"]) / 2
    assert summary["overall"]["score"] == sum(summary[k]["score"] for k in ("text", "image_und", "image_gen")) / 3
    assert results["text"]["qa"]["n"] == und["vqa"]["n"]  # the VQA questions, asked of the passages
    report = (out / "report.md").read_text()
    assert all(f"samples-{t}.png" in report for t in tasks) and (out / "generation.png").is_file()
    assert "generation" in result.stdout


def test_validation_split_scores_other_scenes_and_prompts(tiny_model_dir, tmp_path):
    out = tmp_path / "eval-validation"
    run_script("eval/evaluate.py", "--model", str(tiny_model_dir), "--split", "validation", "--num-test", "8",
               "--num-reconstruct", "4", "--prompts-per-task", "2", "--images-per-prompt", "1", "--out", str(out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["split"] == "validation" and "validation split" in (out / "report.md").read_text()
    scenes = make_examples("validation", 8, seed=0)  # the test's first 8: 70 questions, no single object
    und = saved["results"]["understanding"]
    assert und["vqa"]["n"] == sum(len(e.qa) for e in scenes) == 62
    assert und["caption_single_object"]["n"] == sum(len(e.scene.objects) == 1 for e in scenes) == 3
    # By hand: the seed-1 prompts drawn afresh (as many per task as the eval's file), the first two
    # of each task, sampling seed 0 and the eval's defaults, judged by the parser.
    model = ugen.load(tiny_model_dir, "cpu")
    test_prompts = geneval.load_prompts("eval/prompts/geneval.json")
    fresh = geneval.make_prompts(seed=1, per_task=len(test_prompts["counting"]))
    assert fresh["counting"][:2] != test_prompts["counting"][:2]
    params = SamplingParams(GENERATE_DEFAULTS.temperature, GENERATE_DEFAULTS.top_k, GENERATE_DEFAULTS.top_p, GENERATE_DEFAULTS.cfg)
    for task in ("counting", "position"):
        specs = fresh[task][:2]
        images = model.decode_codes(model.generate_codes([s.prompt for s in specs], 1, params, 0))
        expected = mean(geneval.score(parse(i), s) for i, s in zip(images, specs))
        assert saved["results"]["generation"][task]["score"] == pytest.approx(expected, abs=1e-9)


def test_sampling_sweep_scores_each_setting_on_validation_prompts(tiny_model_dir, tmp_path):
    out = tmp_path / "sweep.json"
    result = run_script("eval/sampling_sweep.py", "--model", str(tiny_model_dir), "--temperatures", "1.0",
                        "--cfgs", "1.0,3", "--prompts-per-task", "2", "--images-per-prompt", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["temperature"], r["cfg"], r["top_k"]) for r in rows] == [(1.0, 1.0, 0), (1.0, 3.0, 0)]
    assert "| 1 | 3 | 0 |" in result.stdout
    # By hand for CFG 3: the seed-1 prompts (not the eval's file), sampling seed 1, the parser's verdicts.
    model = ugen.load(tiny_model_dir, "cpu")
    for task, specs in geneval.make_prompts(seed=1, per_task=2).items():
        images = model.decode_codes(model.generate_codes([s.prompt for s in specs], 1, SamplingParams(1.0, cfg=3.0), 1))
        assert rows[1][task] == pytest.approx(mean(geneval.score(parse(i), s) for i, s in zip(images, specs)), abs=1e-4)
    bad = run_script("eval/sampling_sweep.py", "--model", str(tiny_model_dir), "--cfgs", "high", check=False)
    assert bad.returncode == 2 and "--cfgs takes comma-separated numbers" in bad.stderr
