"""The top-level `tokenizers/` folder must not shadow Hugging Face's `tokenizers` package."""

import subprocess
import sys

from conftest import ROOT


def test_tokenizers_import_is_hugging_face_from_repo_root():
    # Run from the repo root, where a regular package named `tokenizers` would win the import.
    code = "import transformers, tokenizers; print(tokenizers.__file__); print(tokenizers.Tokenizer)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    path = result.stdout.splitlines()[0]
    assert "site-packages" in path and str(ROOT / "tokenizers") not in path


def test_stage_folders_are_not_packages():
    for folder in ("tokenizers", "train", "eval"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/ must stay a folder of scripts"
