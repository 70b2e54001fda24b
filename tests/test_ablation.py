"""The ablation driver (its table on known numbers, a small end-to-end run that resumes) and eval/compare.py."""

import json
import shutil
import sys

import pytest

from conftest import ROOT, TINY_DATA, run_script

sys.path.insert(0, str(ROOT / "eval"))
from ablation import table  # noqa: E402 - eval/ is a folder of scripts, not a package


def test_table_means_stds_and_relative_improvement():
    runs = lambda *xs: [{"text": x, "image_und": x, "image_gen": x, "overall": x} for x in xs]  # noqa: E731
    markdown, numbers = table({"vanilla": runs(0.4, 0.6), "progressive": runs(0.5, 0.7)})
    assert numbers["mean_std"]["vanilla"]["text"] == pytest.approx((0.5, 0.1414213), abs=1e-6)  # sample std
    assert numbers["relative_improvement_percent"]["overall"] == pytest.approx(20.0)
    assert "| progressive vs vanilla | +20.0% | +20.0% | +20.0% | +20.0% |" in markdown
    assert "0.500 ± 0.141" in markdown


def test_ablation_runs_end_to_end_and_skips_finished_runs(tiny_run, tmp_path):
    root = tmp_path / "ablation"
    root.mkdir()
    shutil.copytree(tiny_run / "vq", root / "vq")  # shared tokenizers: the driver trains none
    shutil.copytree(tiny_run / "text", root / "text")
    args = ["--root", str(root), "--seeds", "0", "1", "--steps", "3", "--jobs", "2",
            "--pretrain-args", " ".join([*TINY_DATA, "--batch-tokens", "256", "--text-only-steps", "1", "--eval-every", "3"]),
            "--eval-args", "--num-test 6 --num-reconstruct 2 --images-per-prompt 1 --prompts-per-task 2"]
    first = run_script("eval/ablation.py", *args)
    assert "progressive vs vanilla" in first.stdout and (root / "ablation.md").is_file()
    saved = json.loads((root / "ablation.json").read_text())
    assert set(saved["per_seed"]) == {"vanilla", "progressive"} and all(len(v) == 2 for v in saved["per_seed"].values())
    vanilla = json.loads((root / "vanilla-seed0" / "model" / "ugen.json").read_text())["pretrain"]
    assert vanilla["vocab_schedule"] == "vanilla" and vanilla["text_only_steps"] == 0
    stamps = {p: p.stat().st_mtime for p in root.glob("*-seed*/eval/results.json")}
    run_script("eval/ablation.py", *args)  # everything is done: nothing is retrained or re-evaluated
    assert {p: p.stat().st_mtime for p in root.glob("*-seed*/eval/results.json")} == stamps


def test_compare_tables_two_sets_of_results(tmp_path):
    paths = []
    for i, score in enumerate([0.2, 0.4, 0.5, 0.7]):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps({"results": {"reconstruction": {"overall": {"score": score, "n": 10}}}}))
        paths.append(str(path))
    result = run_script("eval/compare.py", "--before", *paths[:2], "--after", *paths[2:], "--metrics", "reconstruction.overall")
    assert "| reconstruction.overall | 0.300 ± 0.141 | 0.600 ± 0.141 | +0.300 |" in result.stdout
    missing = run_script("eval/compare.py", "--before", paths[0], "--after", paths[1], "--metrics", "text.qa", check=False)
    assert missing.returncode == 2 and "no metric text.qa" in missing.stderr
