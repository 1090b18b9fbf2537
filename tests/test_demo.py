"""`zegot_jax.demo`: bad input worded in one line, the CLI without Gradio, the page in a browser.

The browser test drives Debian's headless Chromium (`apt-get install chromium chromium-driver`,
which `.ci/run` does when they are missing) through selenium against the page served on a free
port of 127.0.0.1. Where Chromium, its driver, Gradio or selenium is missing, the test fails under
`CI=true` (a skip there would hide a missing install step) and is skipped with the reason
elsewhere. `ZEGOT_WRITE_SCREENSHOT=1` also writes the README's picture of the page, `docs/demo.png`.
"""

import importlib.util
import io
import os
import shutil
import socket
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from inference_fixtures import random_image, save_run, smoke_config

from zegot_jax import cli, demo, inference
from zegot_jax.data import class_names
from zegot_jax.evaluation import memory
from zegot_jax.synthetic import world

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "demo.png"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip):
    workdir = str(tmp_path_factory.mktemp("run"))
    save_run(workdir, smoke_config(), tiny_clip)
    return workdir, inference.Segmenter.from_run(workdir)


@pytest.fixture(scope="module")
def segmenter(run):
    return run[1]


def _request(segmenter, tmp_path, image, vocabulary="cat, dog", **kwargs):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return demo.segment_request(segmenter, image, vocabulary, 0.1, out, **kwargs)


def test_vocabulary_parsing():
    assert demo.parse_vocabulary(" cat,dog , green grass") == ["cat", "dog", "green grass"]
    for text, message in (
        ("", "empty"),
        (" , ", "empty"),
        ("cat,,dog", "empty name"),
        ("cat,", "empty name"),
    ):
        with pytest.raises(ValueError, match=message):
            demo.parse_vocabulary(text)


def test_bad_input_is_one_line_naming_the_problem(segmenter, tmp_path, monkeypatch):
    good = tmp_path / "street.png"
    PIL.Image.fromarray(random_image(20, 30)).save(good)
    broken = tmp_path / "upload-1234" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG not really")
    many = ",".join(f"class {i}" for i in range(600))  # the smoke run allows 512
    cases = [
        ((None,), "Upload an image or pick an example first."),
        ((str(broken),), "Cannot read 'broken.png' as an image"),  # the user's name, not the path
        ((str(good), ""), "The vocabulary is empty"),
        ((str(good), "cat, dog, Cat"), "Duplicate class names ['Cat']"),
        ((str(good), many), "600 classes exceed model.max_classes=512"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError) as caught:
            _request(segmenter, tmp_path, *args, name="broken.png")
        shown = demo._shown(caught.value)
        assert message in shown and "\n" not in shown and str(tmp_path) not in shown
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(ValueError) as caught:
        _request(segmenter, tmp_path, str(good))
    assert "Segmenting a 30x20 image needs about" in demo._shown(caught.value)
    assert demo._shown(MemoryError()).startswith("Out of memory")
    assert demo._shown(KeyError("a bug")) is None  # re-raised: gradio reports it as an error


def test_the_seen_penalty_is_per_request(segmenter):
    image = random_image(20, 30)
    plain = segmenter.segment(image, ["cat", "dog", "grass"], calibrate=False)  # cat, dog: seen
    for penalty in (0.0, 0.3, 1.0):
        view = demo.with_seen_penalty(segmenter, penalty)
        lowered = plain.scores - penalty * np.asarray([1.0, 1.0, 0.0])[:, None, None]
        np.testing.assert_array_equal(
            view.segment(image, ["cat", "dog", "grass"]).label_map, np.argmax(lowered, axis=0)
        )
    assert segmenter.config.eval.seen_penalty == 0.1  # the run's own is left alone
    unseen = set(class_names.VOC20) - set(demo.seen_classes(segmenter))
    assert unseen == {"pottedplant", "sheep", "sofa", "train", "tvmonitor"}
    note = demo.classes_note(segmenter)
    assert "**unseen**: pottedplant, sheep, sofa, train, tvmonitor" in note


def test_the_examples_are_the_synthetic_worlds_test_images(tmp_path):
    paths = demo.write_examples(tmp_path)
    assert len(paths) == 3
    for i, path in enumerate(paths):
        want = world.render(0, "test", i, size=demo.EXAMPLE_SIZE)["image"]
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), want)


def test_the_command_without_gradio_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails
    assert cli.main(["demo", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'zegot-jax[demo]'" in err
    folder = types.ModuleType("gradio")  # a folder named gradio (Gradio's /tmp/gradio) on the path
    folder.__path__ = [str(tmp_path / "gradio")]
    monkeypatch.setitem(sys.modules, "gradio", folder)
    assert cli.main(["demo", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"finds {tmp_path / 'gradio'}, which is not the package" in err


def test_the_command_reports_a_missing_run_before_loading(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(demo, "require_gradio", lambda: None)
    assert cli.main(["demo", "--run", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _unavailable(reason: str) -> None:
    """Fails under CI (the install step is missing), skips elsewhere."""
    hint = (
        "(.ci/run installs them: apt-get install chromium chromium-driver; dev.py test "
        "installs gradio and selenium)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: the browser test cannot run {hint}", pytrace=False)
    pytest.skip(f"{reason} {hint}")


def _require_gradio() -> None:
    if importlib.util.find_spec("gradio") is None:
        _unavailable("gradio not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    missing = [m for m in ("gradio", "selenium") if importlib.util.find_spec(m) is None]
    missing += [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed")
    from selenium import webdriver  # noqa: PLC0415 (optional: checked above)
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1700",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_url(segmenter):
    """The page served by `demo.launch` (as in a notebook) on a free port of 127.0.0.1.

    Started outside the tests: a server started under `capsys` writes to its closed stream later.
    """
    _require_gradio()
    port = _free_port()
    page = demo.launch(segmenter, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}"
    page.close()


def _press(driver, vocabulary: str) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    box = driver.find_element(By.CSS_SELECTOR, "#vocabulary textarea")
    box.clear()
    box.send_keys(vocabulary)
    driver.find_element(By.ID, "segment").click()


def _toast(wait, message: str) -> None:
    """Waits for a visible notice (gr.Error) containing `message`."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    wait.until(
        lambda d: [
            t
            for t in d.find_elements(By.CSS_SELECTOR, "[data-testid='toast-body']")
            if message in t.text and t.is_displayed()
        ]
    )


def _offered_label_map(driver, wait, previous: str | None) -> tuple[str, np.ndarray]:
    """Waits for a new label map to download (after the overlay) and reads it."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    def link(d):
        links = d.find_elements(By.CSS_SELECTOR, "#labels a[href]")
        href = links[0].get_attribute("href") if links else None
        return href if href != previous and d.find_elements(By.CSS_SELECTOR, "#overlay img") else None

    href = wait.until(link)
    assert href.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(href, timeout=30) as response:
        picture = PIL.Image.open(io.BytesIO(response.read()))
    assert picture.mode == "P"  # a palette PNG of class indices, as `zegot-jax segment` writes
    return href, np.asarray(picture)


def _screenshot(driver, path: Path) -> None:
    """The whole page once idle, reduced to a palette (a small PNG for the README)."""
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    driver.execute_script(
        "document.querySelectorAll(\"[data-testid='toast-close']\").forEach(b => b.click())"
    )  # the earlier notices
    WebDriverWait(driver, 30, poll_frequency=0.1).until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll(\"[data-testid='status-tracker']\")]"
            ".every(t => t.classList.contains('hide'))"
            " && !document.querySelector(\"[data-testid='toast-body']\")"
        )
    )
    height = driver.execute_script(
        "return Math.max(...[...document.querySelectorAll('body *')].map(e => e.scrollHeight))"
    )
    driver.set_window_size(1280, height + 120)
    shot = PIL.Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    shot.quantize(colors=256, method=PIL.Image.Quantize.MEDIANCUT).save(path, optimize=True)
    driver.set_window_size(1280, 1700)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")
def test_the_page_in_a_browser(run, page_url, browser, tmp_path, monkeypatch, capsys):
    """Upload, classes, button: the offered label map is `Segmenter.segment`'s.

    An unreadable upload and a bad vocabulary show their messages and the next request works
    without compiling again; `zegot-jax demo` on the page's port says in one line that it is taken.
    """
    from selenium.common.exceptions import (  # noqa: PLC0415
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    workdir, segmenter = run
    image = tmp_path / "scene.png"
    PIL.Image.fromarray(world.render(0, "test", 5, size=96)["image"]).save(image)
    wait = WebDriverWait(
        browser,
        120,
        poll_frequency=0.1,  # the page re-renders what it updates
        ignored_exceptions=[NoSuchElementException, StaleElementReferenceException],
    )
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    browser.get(page_url)
    first = ["cucumber", "grape", "lime", "sky", "water"]
    for upload in (broken, image):
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(upload))
        wait.until(
            lambda d, name=upload.name: [
                i
                for i in d.find_elements(By.CSS_SELECTOR, "#image img")
                if name in (i.get_attribute("src") or "")
            ]
        )
        _press(browser, ", ".join(first))
        if upload == broken:  # read by the page's own code: its message names the file
            _toast(wait, "Cannot read 'broken.png' as an image")
    href, labels = _offered_label_map(browser, wait, None)
    np.testing.assert_array_equal(labels, segmenter.segment(image, first).label_map)
    wait.until(lambda d: "5 classes, segmented in" in d.find_element(By.ID, "status").text)
    column = lambda c: [
        e.text for e in browser.find_elements(By.CSS_SELECTOR, f"#scores [role=gridcell][data-col='{c}']")
    ]
    wait.until(lambda d: column(0) == first)  # the table: class, mean, max, pixel share
    share = np.bincount(labels.ravel(), minlength=len(first)) / labels.size
    np.testing.assert_allclose([float(x) for x in column(3)], share, atol=1e-4)
    if os.environ.get("ZEGOT_WRITE_SCREENSHOT") == "1":
        _screenshot(browser, SCREENSHOT)
    drawn = browser.find_element(By.CSS_SELECTOR, "#prompts img").get_attribute("src")
    browser.find_element(By.CSS_SELECTOR, "#grid-class input").click()  # another class's maps
    wait.until(
        lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "#grid-class li") if o.text.strip() == "sky"]
    )[0].click()
    redrawn = wait.until(
        lambda d: (
            (src := d.find_element(By.CSS_SELECTOR, "#prompts img").get_attribute("src")) not in (drawn, None)
            and src
        )
    )
    assert "prompts-sky.png" in redrawn
    compiled = segmenter.num_compilations()

    _press(browser, "cat, dog, Cat")
    _toast(wait, "Duplicate class names ['Cat']")

    second = ["grass", "sky", "person", "car", "water", "ice"]  # another vocabulary, same bucket
    _press(browser, ", ".join(second))
    _, labels = _offered_label_map(browser, wait, href)
    np.testing.assert_array_equal(labels, segmenter.segment(image, second).label_map)
    assert segmenter.num_compilations() == compiled

    monkeypatch.setattr(inference.Segmenter, "from_run", lambda *_, **__: segmenter)
    port = page_url.rsplit(":", 1)[1]
    assert cli.main(["demo", "--run", workdir, "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"Cannot serve on 127.0.0.1:{port}" in err and err.count("\n") == 1
