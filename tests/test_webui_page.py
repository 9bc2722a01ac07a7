"""The web page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium against ``python -m mind_diffusion.webui`` (what
``webui.sh`` runs) on 127.0.0.1. Skipped, with the reason, where gradio, Selenium or the browser
is missing (``bash scripts/setup.sh webui``; ``apt-get install chromium chromium-driver``).

* bad input (empty prompt, a size off the model's multiple, 0 steps, a checkpoint removed after
  the page listed it): the pipeline's message on the page, the server stays up; GLIDE without
  its checkpoints says which files it needs;
* PNG info: a suite PNG and an AUTOMATIC1111 PNG put their settings into the form;
* (slow) a shapes-world prompt generated on the page, the gallery image downloaded: pixel for
  pixel and metadata for metadata the image of the command line the page shows (``infer.sh``),
  and a second tab sees its place in the queue.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PROMPT = "一个红色的圆形在左边"
WAIT = 600  # the first generation compiles the model's graphs (about a minute on 2 busy cores)


def _missing() -> str | None:
    for mod, how in (("gradio", "bash scripts/setup.sh webui"), ("selenium", "bash scripts/setup.sh dev")):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed ({how})"
    if not (CHROMIUM and DRIVER):
        return "Debian's chromium / chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page on a free port over a models folder with the built-in shapes model and a second
    LDM folder (``gone_zh``, whose checkpoint a test removes); images to a fresh folder."""
    base = tmp_path_factory.mktemp("webui")
    models, out = base / "models", base / "output"
    models.mkdir()
    (models / "shapes_zh").symlink_to(ROOT / "models" / "shapes_zh")
    gone = models / "gone_zh"
    gone.mkdir()
    for f in ("config.yaml", "vocab.txt"):
        shutil.copy(ROOT / "models" / "shapes_zh" / f, gone / f)
    (gone / "model.ckpt").symlink_to(ROOT / "models" / "shapes_zh" / "model.ckpt")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               GLOG_v="3")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mind_diffusion.webui", "--port", str(port),
                             "--models_dir", str(models), "--output_path", str(out), "--device_target", "CPU"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() - t0 > 180:
                proc.kill()
                pytest.fail("the page did not start:\n" + (base / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    yield {"url": url, "out": out, "models": models, "proc": proc, "log": base / "server.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1100"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------- helpers
def css(driver, selector, timeout=30):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located(("css selector", selector)))


def type_into(driver, selector, text):
    from selenium.webdriver.common.keys import Keys

    el = css(driver, selector)
    el.click()
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.DELETE)
    if text != "":
        el.send_keys(str(text))
    el.send_keys(Keys.TAB)


def value(driver, selector) -> str:
    return css(driver, selector).get_attribute("value")


def wait_for_text(driver, text, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if text in driver.find_element("tag name", "body").text:
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not shown on the page within {timeout} s; the page says:\n"
                         + driver.find_element("tag name", "body").text[-2000:])


def close_toasts(driver):
    for b in driver.find_elements("css selector", ".toast-close"):
        try:
            b.click()
        except Exception:  # already gone
            pass


def open_page(driver, server, tab=None):
    driver.get(server["url"])
    css(driver, "#t2i_prompt textarea")
    if tab:
        next(b for b in driver.find_elements("css selector", "button[role=tab]") if b.text == tab).click()


def pick_model(driver, label, timeout=30):
    """Choose ``label`` in the model dropdown by clicking its option (pressing Enter right after
    typing can pick the option that was active before the list filtered, on a busy machine)."""
    from selenium.webdriver.common.keys import Keys

    el = css(driver, "#t2i_model input")
    t0 = time.time()
    while True:
        el.click()
        el.send_keys(Keys.CONTROL, "a")
        el.send_keys(label)
        opts = [o for o in driver.find_elements("css selector", "#t2i_model li[data-testid=dropdown-option]")
                if o.get_attribute("aria-label") == label]
        if opts:
            try:
                opts[0].click()
            except Exception:  # the list re-rendered under the click: try again
                pass
        el.send_keys(Keys.TAB)
        if value(driver, "#t2i_model input") == label:
            return
        if time.time() - t0 > timeout:
            raise AssertionError(f"could not pick {label!r} in the model list; it shows "
                                 f"{value(driver, '#t2i_model input')!r}")
        time.sleep(0.5)


def gallery_images(driver) -> list:
    return [e.get_attribute("src") for e in driver.find_elements("css selector", "#t2i_gallery img")
            if (e.get_attribute("src") or "").startswith("http")]


# ---------------------------------------------------------------------------- tests
def test_bad_input_is_a_message_on_the_page_and_the_server_stays_up(server, browser):
    open_page(browser, server)
    type_into(browser, "#t2i_prompt textarea", "")
    css(browser, "#t2i_generate").click()
    wait_for_text(browser, "the prompt is empty")
    close_toasts(browser)

    type_into(browser, "#t2i_prompt textarea", PROMPT)
    type_into(browser, "#t2i_width input", 70)
    css(browser, "#t2i_generate").click()
    wait_for_text(browser, "Width (--W) must be a positive multiple of 16")
    close_toasts(browser)

    type_into(browser, "#t2i_width input", 64)
    type_into(browser, "#t2i_steps input", 0)
    css(browser, "#t2i_generate").click()
    wait_for_text(browser, "sampling steps must be >= 1, got 0")
    close_toasts(browser)

    (server["models"] / "gone_zh" / "model.ckpt").unlink()  # removed after the page listed it
    type_into(browser, "#t2i_steps input", 20)
    pick_model(browser, "gone_zh (shapes-zh)")
    css(browser, "#t2i_generate").click()
    wait_for_text(browser, "checkpoint not found")
    assert "gone_zh/model.ckpt" in browser.find_element("tag name", "body").text
    close_toasts(browser)

    assert server["proc"].poll() is None, server["log"].read_text()[-3000:]
    assert not list(server["out"].glob("**/*.png")), "nothing is written for a refused request"
    open_page(browser, server, tab="GLIDE")  # the server still answers; GLIDE says what it needs
    wait_for_text(browser, "GLIDE is off: no checkpoints")
    assert "glide_gen.ckpt" in browser.find_element("tag name", "body").text
    assert not css(browser, "#glide_prompt textarea").is_enabled()


def send_png(driver, server, path):
    open_page(driver, server, tab="PNG info")
    css(driver, "#png_file input[type=file]").send_keys(str(path))
    wait_for_text(driver, "metadata")
    css(driver, "#png_send").click()
    t0 = time.time()
    while not css(driver, "#t2i_prompt textarea").is_displayed():
        assert time.time() - t0 < 30, "Send to text to image did not switch to the tab"
        time.sleep(0.2)
    time.sleep(1)


def form(driver) -> dict:
    return {k: value(driver, f"#t2i_{k} {'textarea' if k in ('prompt', 'negative') else 'input'}")
            for k in ("prompt", "negative", "sampler", "steps", "scale", "seed", "width", "height")}


def test_png_info_sends_its_settings_to_the_form(server, browser, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from mind_diffusion.utils.images import save_png

    img = np.zeros((8, 8, 3), np.uint8)
    ours = save_png(tmp_path / "ours.png", img, {
        "prompt": "两个蓝色的方形在右边", "negative_prompt": "模糊", "model": "shapes-zh", "sampler": "plms",
        "steps": 12, "scale": 3.5, "seed": 7, "size": "48x80", "checkpoint": "model.ckpt"})
    send_png(browser, server, ours)
    assert form(browser) == {"prompt": "两个蓝色的方形在右边", "negative": "模糊", "sampler": "plms", "steps": "12",
                             "scale": "3.5", "seed": "7", "width": "48", "height": "80"}

    info = PngInfo()
    info.add_text("parameters", "a red fox in the snow\nNegative prompt: blurry\nSteps: 30, Sampler: DDIM, "
                                "CFG scale: 6.5, Seed: 1234, Size: 512x768, Model: v1-5-pruned-emaonly")
    Image.fromarray(img).save(tmp_path / "a1111.png", pnginfo=info)
    send_png(browser, server, tmp_path / "a1111.png")
    assert form(browser) == {"prompt": "a red fox in the snow", "negative": "blurry", "sampler": "ddim",
                             "steps": "30", "scale": "6.5", "seed": "1234", "width": "512", "height": "768"}
    wait_for_text(browser, "v1-5-pruned-emaonly, which is not under")  # the model is kept, and it says so


@pytest.mark.slow
def test_page_image_equals_infer_sh_pixel_for_pixel(server, browser, tmp_path):
    from PIL import Image

    from mind_diffusion.utils.images import read_png_parameters

    open_page(browser, server)
    type_into(browser, "#t2i_prompt textarea", PROMPT)
    type_into(browser, "#t2i_seed input", 7)
    css(browser, "#t2i_generate").click()
    first = browser.current_window_handle
    # a second tab queues behind the first generation and sees its place
    browser.switch_to.new_window("tab")
    open_page(browser, server)
    type_into(browser, "#t2i_prompt textarea", PROMPT)
    type_into(browser, "#t2i_seed input", 8)
    css(browser, "#t2i_generate").click()
    wait_for_text(browser, "queue", timeout=30)
    t0 = time.time()
    while not gallery_images(browser):
        assert time.time() - t0 < WAIT, browser.find_element("tag name", "body").text[-2000:]
        time.sleep(1)
    browser.close()
    browser.switch_to.window(first)
    t0 = time.time()
    while not gallery_images(browser):
        assert time.time() - t0 < WAIT, browser.find_element("tag name", "body").text[-2000:]
        time.sleep(1)
    srcs = gallery_images(browser)
    assert len(srcs) == 1
    got = tmp_path / "downloaded.png"
    got.write_bytes(urllib.request.urlopen(srcs[0], timeout=30).read())
    command = value(browser, "#t2i_command textarea")
    assert command.startswith("bash infer.sh ") and "--seed 7 " in command, command

    # the command line the page shows writes the same image
    ref = tmp_path / "ref"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    p = subprocess.run(shlex.split(command) + ["--output_path", str(ref)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 0, p.stderr[-3000:]
    want = ref / "samples" / "00000.png"
    assert np.array_equal(np.asarray(Image.open(got)), np.asarray(Image.open(want)))
    meta = read_png_parameters(got)
    assert meta == read_png_parameters(want)
    assert {k: meta[k] for k in ("prompt", "negative_prompt", "sampler", "steps", "scale", "seed", "size",
                                 "checkpoint")} == {
        "prompt": PROMPT, "negative_prompt": "", "sampler": "dpm_solver", "steps": 20, "scale": 4.0, "seed": 7,
        "size": "64x64", "checkpoint": "model.ckpt"}
    from mind_diffusion.checkpoint.io import file_sha256

    assert meta["checkpoint_sha256"] == file_sha256(ROOT / "models" / "shapes_zh" / "model.ckpt")
    # the page wrote the scripts' layout: samples/00000.png (seed 7), 00001.png (seed 8), grids
    samples = sorted(p.name for p in (server["out"] / "samples").glob("*.png"))
    assert samples == ["00000.png", "00001.png"]
    assert sorted(read_png_parameters(server["out"] / "samples" / n)["seed"] for n in samples) == [7, 8]
    assert len(list((server["out"] / "grids").glob("*.png"))) == 2
    assert Image.open(got).tobytes() == Image.open(server["out"] / "samples" / "00000.png").tobytes()


# ---------------------------------------------------------------------------- image editing
def edit_files(tmp_path):
    """A 64x64 shapes-world scene (red disc on the left) and a mask of its right half."""
    from PIL import Image

    yy, xx = np.mgrid[:64, :64]
    img = np.full((64, 64, 3), 235, np.uint8)
    img[(yy - 32) ** 2 + (xx - 16) ** 2 < 144] = (220, 30, 30)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(img).save(tmp_path / "scene.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "black.png")
    return tmp_path / "scene.png", tmp_path / "mask.png", tmp_path / "black.png"


def test_edit_tab_bad_input_is_a_message_on_the_page(server, browser, tmp_path):
    init, _mask, black = edit_files(tmp_path)
    before = sorted(server["out"].glob("**/*.png"))
    open_page(browser, server, tab="Image editing")
    wait_for_text(browser, "blended latent diffusion")  # the built-in model inpaints by blending
    type_into(browser, "#edit_prompt textarea", "一个蓝色的正方形在右边")
    css(browser, "#edit_generate").click()
    wait_for_text(browser, "no init image")
    close_toasts(browser)
    css(browser, "#edit_init input[type=file]").send_keys(str(init))
    time.sleep(1)
    css(browser, "#edit_generate").click()
    wait_for_text(browser, "the mask is empty")  # nothing drawn, no mask file
    close_toasts(browser)
    css(browser, "#edit_mask input[type=file]").send_keys(str(black))
    time.sleep(1)
    css(browser, "#edit_generate").click()
    wait_for_text(browser, "has no white pixel")
    close_toasts(browser)
    assert server["proc"].poll() is None, server["log"].read_text()[-3000:]
    assert sorted(server["out"].glob("**/*.png")) == before, "nothing is written for a refused request"


@pytest.mark.slow  # compiles the model's graphs on the page, then the script does again (minutes)
def test_edit_tab_inpaints_as_its_command_line(server, browser, tmp_path):
    from PIL import Image

    from mind_diffusion.utils.images import read_png_parameters

    init, mask, _black = edit_files(tmp_path)
    open_page(browser, server, tab="Image editing")
    css(browser, "#edit_init input[type=file]").send_keys(str(init))
    css(browser, "#edit_mask input[type=file]").send_keys(str(mask))
    time.sleep(1)
    type_into(browser, "#edit_prompt textarea", "一个蓝色的正方形在右边")
    type_into(browser, "#edit_steps input", 6)
    type_into(browser, "#edit_seed input", 3)
    css(browser, "#edit_generate").click()
    t0 = time.time()
    srcs = []
    while not srcs:
        assert time.time() - t0 < WAIT, browser.find_element("tag name", "body").text[-2000:]
        time.sleep(1)
        srcs = [e.get_attribute("src") for e in browser.find_elements("css selector", "#edit_gallery img")
                if (e.get_attribute("src") or "").startswith("http")]
    got = tmp_path / "downloaded.png"
    got.write_bytes(urllib.request.urlopen(srcs[0], timeout=30).read())
    command = value(browser, "#edit_command textarea")
    cmd = shlex.split(command)
    assert cmd[:2] == ["python", "scripts/inpaint.py"] and "--mask" in cmd, command
    kept = Path(cmd[cmd.index("--mask") + 1])
    assert kept.parent == server["out"] / "inputs"
    assert np.array_equal(np.asarray(Image.open(kept)), np.asarray(Image.open(mask)))
    ref = tmp_path / "ref"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable] + cmd[1:] + ["--output_path", str(ref)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 0, p.stderr[-3000:]
    want = ref / "samples" / "00000.png"
    assert np.array_equal(np.asarray(Image.open(got)), np.asarray(Image.open(want)))
    meta = read_png_parameters(got)
    assert meta == read_png_parameters(want)
    assert (meta["mode"], meta["strength"], meta["seed"], meta["steps"]) == ("blend", 1.0, 3, 6)
    assert meta["mask_file"] == kept.name and len(meta["mask_file_sha256"]) == 64
