"""The ablation driver (its table on known numbers, a small end-to-end run from a text LM that resumes) and eval/compare.py."""

import json
import shutil
import sys

import pytest

from conftest import ROOT, TINY_DATA, run_script

sys.path.insert(0, str(ROOT / "eval"))
from ablation import table  # noqa: E402 - eval/ is a folder of scripts, not a package


def test_table_means_stds_and_relative_change_against_vanilla():
    runs = lambda *xs: [{"text": x, "image_und": x, "image_gen": x, "overall": x} for x in xs]  # noqa: E731
    markdown, numbers = table({"vanilla": runs(0.4, 0.6), "progressive-random": runs(0.5, 0.7),
                               "progressive-frequency": runs(0.45, 0.45)})
    assert numbers["mean_std"]["vanilla"]["text"] == pytest.approx((0.5, 0.1414213), abs=1e-6)  # sample std
    assert numbers["relative_to_vanilla_percent"]["progressive-random"]["overall"] == pytest.approx(20.0)
    assert numbers["relative_to_vanilla_percent"]["progressive-frequency"]["text"] == pytest.approx(-10.0)
    assert "| progressive-random vs vanilla | +20.0% | +20.0% | +20.0% | +20.0% |" in markdown
    assert "| progressive-frequency vs vanilla | -10.0% |" in markdown
    assert "0.500 ± 0.141" in markdown and "0.450 ± 0.000" in markdown
    single, _ = table({"vanilla": runs(0.4), "progressive-random": runs(0.5), "progressive-frequency": runs(0.45)})
    assert "| vanilla (1 seed) | 0.400 | 0.400 | 0.400 | 0.400 |" in single and "±" not in single  # one seed: no spread


@pytest.mark.slow
def test_ablation_from_a_text_lm_runs_end_to_end_and_skips_finished_runs(tiny_run, tmp_path):
    root = tmp_path / "ablation"
    root.mkdir()
    shutil.copytree(tiny_run / "vq", root / "vq")  # shared tokenizers: the driver trains none
    shutil.copytree(tiny_run / "text", root / "text")
    # One seed (the driver's per-seed bookkeeping is the same for several; the table's std is checked above).
    args = ["--root", str(root), "--seeds", "1", "--steps", "3", "--text-only-steps", "1", "--text-lm-steps", "2",
            "--starts", "text-lm", "--jobs", "2",
            "--pretrain-args", " ".join([*TINY_DATA, "--batch-tokens", "256", "--eval-every", "3"]),
            "--eval-args", "--num-test 6 --num-reconstruct 2 --images-per-prompt 1 --prompts-per-task 2"]
    first = run_script("eval/ablation.py", *args)
    assert "progressive-random vs vanilla" in first.stdout and "Text before images joined" in first.stdout
    saved = json.loads((root / "ablation.json").read_text())["text-lm"]
    assert set(saved["per_seed"]) == {"vanilla", "progressive-random", "progressive-frequency"}
    assert all(len(v) == 1 for v in saved["per_seed"].values()) and len(saved["text_lm_before"]["text"]) == 1
    text_lm = json.loads((root / "text-lm" / "model" / "ugen.json").read_text())["pretrain"]
    assert text_lm["mix"] == {"text": 1.0, "text_qa": 1.0} and text_lm["steps"] == 2
    for arm, schedule, order in [("vanilla", "vanilla", None), ("progressive-random", "progressive", "random"),
                                 ("progressive-frequency", "progressive", "frequency")]:
        config = json.loads((root / f"text-lm-{arm}-seed1" / "model" / "ugen.json").read_text())["pretrain"]
        assert config["seed"] == 1 and config["vocab_schedule"] == schedule and config["text_only_steps"] == 1  # the same phase 0 in every arm
        assert config["init_from"] == str(root / "text-lm" / "model") and (order is None or config["vocab_order"] == order)
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
