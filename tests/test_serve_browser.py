"""The web page of `ugen serve`, driven in headless Chromium (Debian's chromium and chromium-driver)
against a live server: every panel's answer is the Python API's, and bad input shows the error.

UGEN_BROWSER_MODEL=DIR serves another model than the tests' tiny one; UGEN_SCREENSHOT=FILE.png
keeps a screenshot of the page at the end (the README's is of runs/default/model).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import random
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import ugen
from ugen.api import GENERATE_DEFAULTS, WRITE_DEFAULTS
from ugen.serve import create_app
from ugen.shapes import render, sample_scene

from conftest import live_server, opens_images

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_captions_answers_draws_and_writes_as_the_api_does(browser, tiny_model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = ugen.load(os.environ.get("UGEN_BROWSER_MODEL", tiny_model_dir))
    picture = render(sample_scene(random.Random(11)), model.image_size)
    PIL.Image.fromarray(picture).save(tmp_path / "scene.png")
    wait = WebDriverWait(browser, 60)

    def by_id(name):
        return browser.find_element(By.ID, name)

    def answer_of(name) -> str:
        """An output's answer (without the time the page shows beside it), once it has one."""
        wait.until(lambda _: by_id(name).find_elements(By.CLASS_NAME, "answer"))
        return by_id(name).find_element(By.CLASS_NAME, "answer").get_attribute("textContent")

    def fill(name, value):
        by_id(name).clear()
        by_id(name).send_keys(str(value))

    with live_server(create_app(model)) as url:
        browser.get(url)
        wait.until(lambda _: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        assert str(model.directory) in by_id("model").text

        by_id("image-input").send_keys(str(tmp_path / "scene.png"))
        wait.until(lambda _: by_id("caption-btn").is_enabled())
        by_id("caption-btn").click()
        assert answer_of("caption-out") == model.caption([picture])[0]
        assert "ms, batch of 1" in by_id("caption-out").find_element(By.CLASS_NAME, "time").text

        fill("question", "how many circles are there?")
        by_id("ask-btn").click()
        assert answer_of("answer-out") == model.ask(picture, "how many circles are there?")

        fill("draw-prompt", "a blue square")
        fill("draw-num", 3)
        fill("draw-seed", 5)
        by_id("draw-btn").click()
        assert answer_of("draw-status") == "3 images"
        shown = [img.get_attribute("src") for img in by_id("draw-grid").find_elements(By.TAG_NAME, "img")]
        for src, want in zip(shown, model.generate("a blue square", 3, GENERATE_DEFAULTS, 5), strict=True):
            got = PIL.Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,"))))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

        prompt = by_id("text-prompt").get_attribute("value")
        by_id("text-btn").click()
        assert answer_of("text-out") == model.complete(prompt, max_new_tokens=48)

        # text with images inside it; the tiny model is made to open images (conftest.opens_images)
        with contextlib.nullcontext() if "UGEN_BROWSER_MODEL" in os.environ else opens_images(model):
            parts = model.write([prompt], WRITE_DEFAULTS, 0)[0]
            images = [p for p in parts if not isinstance(p, str)]
            by_id("text-images").click()
            by_id("text-btn").click()  # the page empties the output before it asks the server
            answer_of("text-out")
        shown = [img.get_attribute("src") for img in by_id("text-out").find_elements(By.TAG_NAME, "img")]
        assert "UGEN_BROWSER_MODEL" in os.environ or images, "the tiny model drew no image inside the text"
        for src, want in zip(shown, images, strict=True):
            got = PIL.Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,"))))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        text = by_id("text-out").find_element(By.CLASS_NAME, "answer").get_attribute("textContent")
        assert " ".join(text.split()) == " ".join(p for p in parts if isinstance(p, str))

        screenshot = Path(os.environ.get("UGEN_SCREENSHOT", tmp_path / "page.png"))
        browser.save_screenshot(str(screenshot))
        assert PIL.Image.open(screenshot).size[0] > 0

        fill("draw-prompt", "   ")  # bad input: the server's one-line error, in the page
        by_id("draw-btn").click()
        wait.until(lambda _: "error" in by_id("draw-status").get_attribute("class"))
        assert by_id("draw-status").text == "the prompt is empty"
        assert by_id("draw-grid").find_elements(By.TAG_NAME, "img") == []
