"""End to end: the real web demo app, served on 127.0.0.1, driven in headless Debian chromium through selenium.

Upload an image, type a question, move the latency slider with the keyboard, ask; read back the streamed answer (it
must be the answer `run_request` gives for the same request), the plan drawn per layer and the measured figures;
compare budgets; and the page's messages for bad input. Screenshots are saved as test artefacts in `tests/artifacts/`
(git-ignored; `ADA_HF_TEST_ARTIFACTS` moves them).

Needs chromium and chromedriver (`apt-get install -y chromium chromium-driver`, which `.ci/run` does where apt is
usable); skips, saying so, when either is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web demo needs gradio (the demo / test extra)")
pytest.importorskip("selenium", reason="the browser test needs selenium (the webtest / test extra)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_web_demo import tiny_web_models  # noqa: E402

from ada_hf import web_demo as wd  # noqa: E402
from ada_hf.demo import demo_image  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver; .ci/run does this "
        "where apt is usable)",
        allow_module_level=True,
    )

ARTIFACTS = Path(os.environ.get("ADA_HF_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
QUESTION = "What colour is the roof?"
WAIT_S = 45  # for one request on the tiny model; the app's own timeout is below it, so the page always answers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """The real app on the tiny models (L and H), on a free port of 127.0.0.1; closed after the module."""
    models = tiny_web_models()
    app = wd.launch(models=models, port=_free_port(), block=False, timeout=30)
    try:
        yield app.local_url, models
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root in a container, where chromium's sandbox cannot start.
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1500")
    for flag in flags:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as error:  # installed but unable to start (no display libraries, ...): say so
        pytest.skip(f"chromium could not start: {error.msg}")
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, url: str) -> WebDriverWait:
    driver.get(url)
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
    return wait


def _replace_text(element, text: str) -> None:
    """Select all and type over it: keystrokes fire the input events the page listens to (`clear()` does not)."""
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    if text:
        element.send_keys(text)


def _status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_ask_under_a_budget_and_compare(served, browser, tmp_path):
    url, models = served
    image_path = tmp_path / "house.png"
    demo_image().save(image_path)
    start = time.monotonic()
    wait = _open(browser, url)

    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image_path))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))
    _replace_text(browser.find_element(By.CSS_SELECTOR, "#question textarea"), QUESTION)
    # Move the slider as a person would with the keyboard: to its minimum (0.05), then 14 steps of 0.05 up.
    slider = browser.find_element(By.CSS_SELECTOR, "#budget input[type=range]")
    slider.send_keys(Keys.HOME)
    for _ in range(14):
        slider.send_keys(Keys.ARROW_RIGHT)
    shown = browser.find_element(By.CSS_SELECTOR, "#budget input[type=number]").get_attribute("value")
    assert float(shown) == pytest.approx(0.75)
    browser.find_element(By.CSS_SELECTOR, "#variant input[value=L]").click()

    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#plan .ada-plan"))
    wait.until(lambda d: "Done:" in _status(d))

    # The page shows what the functions compute for the same request (greedy decoding: the same answer).
    expected = wd.run_request(wd.validate_request(models, str(image_path), QUESTION, 0.75, "L"))
    answer = browser.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
    assert answer == expected.answer and answer
    layers = browser.find_elements(By.CSS_SELECTOR, "#plan .ada-layer")
    assert len(layers) == 10
    assert [int(el.get_attribute("data-heads")) for el in layers] == expected.heads
    summary = browser.find_element(By.CSS_SELECTOR, "#plan .ada-plan-summary").text
    assert f"{expected.layers_run}/10 layers" in summary and "budget 0.75" in summary
    metrics = {
        row.get_attribute("data-metric"): row.find_elements(By.TAG_NAME, "td")[1].text
        for row in browser.find_elements(By.CSS_SELECTOR, "#metrics tr")
    }
    assert metrics["image_tokens"] == "576" and metrics["model"] == "L"
    assert metrics["budget_effective"] == f"{expected.latency_effective:.3f}"
    assert float(metrics["prefill_seconds"]) > 0 and float(metrics["total_gflops"]) > 0
    _screenshot(browser, "web_demo_ask.png")

    # Compare budgets: the default list, one card per budget, side by side.
    browser.find_element(By.ID, "compare").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#comparison .ada-compare-card")) == 4)
    cards = browser.find_elements(By.CSS_SELECTOR, "#comparison .ada-compare-card")
    assert [float(c.get_attribute("data-budget")) for c in cards] == [1.0, 0.85, 0.7, 0.5]
    assert "Compared 4 budgets." in browser.find_element(By.ID, "compare-status").text
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    path = _screenshot(browser, "web_demo_compare.png")
    assert path.stat().st_size > 10_000
    assert time.monotonic() - start < 60


def test_bad_input_gets_a_clear_message(served, browser, tmp_path):
    url, _ = served
    wait = _open(browser, url)
    browser.find_element(By.ID, "ask").click()  # no image yet
    wait.until(lambda d: "upload an image" in _status(d))

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a picture")
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(broken))
    time.sleep(0.5)  # the upload lands before the click
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: "could not be decoded" in _status(d))

    image_path = tmp_path / "house.png"
    demo_image().save(image_path)
    browser.find_element(By.CSS_SELECTOR, "#image button[aria-label='Remove Image']").click()
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image_path))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))
    _replace_text(browser.find_element(By.CSS_SELECTOR, "#question textarea"), "")
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: "Please type a question" in _status(d))

    budgets = browser.find_element(By.CSS_SELECTOR, "#compare-budgets textarea, #compare-budgets input")
    _replace_text(budgets, "1.0, 2")
    browser.find_element(By.ID, "compare").click()
    wait.until(lambda d: "outside (0, 1]" in d.find_element(By.ID, "compare-status").text)
    _screenshot(browser, "web_demo_errors.png")


def test_token_reduction_shows_the_kept_patches(served, browser, tmp_path):
    url, _ = served
    image_path = tmp_path / "house.png"
    demo_image().save(image_path)
    wait = _open(browser, url)
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image_path))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))
    browser.find_element(By.CSS_SELECTOR, "#variant input[value=H]").click()
    # Only the presets this model supports are offered (llavolta-light pools at layer 16; the tiny model has 10).
    browser.find_element(By.CSS_SELECTOR, "#reduction input").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[role=option]"))
    options = {o.get_attribute("aria-label"): o for o in browser.find_elements(By.CSS_SELECTOR, "[role=option]")}
    assert set(options) == {"none", "llavolta-heavy", "illava-image", "illava-video"}
    options["illava-image"].click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#reduction input").get_attribute("value") == "illava-image")
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: "Done:" in _status(d))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#kept img"))
    image_tokens = browser.find_element(By.CSS_SELECTOR, "#metrics tr[data-metric=image_tokens] td:last-child").text
    assert image_tokens == str(576 - 4 * 72)
    assert browser.find_element(By.CSS_SELECTOR, "#metrics tr[data-metric=model] td:last-child").text == "H"
    _screenshot(browser, "web_demo_kept_patches.png")
