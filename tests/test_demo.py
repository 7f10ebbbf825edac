"""The demo page (`python -m vidaccel_train.demo`) as people use it: served on 127.0.0.1 and
driven in a headless Chromium. A rotated phone-style upload plays upright and gets predict's
top-1; a file that is not a video gives one error line and the page goes on; the page asks
nothing of any other host, and neither does the server. A missing or modified artifact stops
the command with one error line before anything is served. In the Camera tab, Chromium's fake
camera playing a synthetic motion, the live top-1 follows the motion.

The program is a tiny network lowered to XNNPACK here (seconds, not a training run); the demo
reads it through the same manifest contract as a real export. The Camera test serves the
session's smoke run instead (a model that tells the motions apart)."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn

from vidaccel_train.export.manifest import sha256_of

from support.video_corpus import read_indices, write_case

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["walk", "run", "jump", "wave"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# The demo run with an audit hook that records every address its process binds, connects to or
# looks up: the server side of "nothing leaves the machine".
AUDITED_DEMO = """
import runpy, sys
log = open(sys.argv.pop(1), "a", buffering=1)
def hook(event, args):
    if event in ("socket.bind", "socket.connect"):
        log.write(f"{event} {args[1]!r}\\n")
    elif event == "socket.getaddrinfo":
        log.write(f"{event} {args[0]!r}\\n")
sys.addaudithook(hook)
sys.argv[0] = "vidaccel_train.demo"
runpy.run_module("vidaccel_train.demo", run_name="__main__", alter_sys=True)
"""


class TinyClassifier(nn.Module):
    """A clip ``(B, 3, T, H, W)`` -> class logits, in operators XNNPACK runs whole."""

    def __init__(self, frames: int, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3 * frames, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, clip):
        batch, channels, frames, height, width = clip.shape
        features = torch.relu(self.conv(clip.reshape(batch, channels * frames, height, width)))
        return self.head(nn.functional.avg_pool2d(features, (height, width)).flatten(1))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """An export folder: a lowered program and the manifest fields predict and the demo read."""
    from vidaccel_train.export.executorch import lower_to_executorch
    from vidaccel_train.files import write_atomic

    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    frames, crop = 4, 32
    program = lower_to_executorch(TinyClassifier(frames, len(CLASSES)).eval(), torch.randn(1, 3, frames, crop, crop))
    path = write_atomic(folder / "model_fp32.pte", program.buffer)
    manifest = {
        "model": "tiny",
        "classes": CLASSES,
        "input_shape": [1, 3, frames, crop, crop],
        "layout": "B,C,T,H,W",
        "mean": [0.45] * 3,
        "std": [0.225] * 3,
        "num_frames": frames,
        "sampling_rate": 2,
        "target_fps": 10,
        "crop_size": crop,
        "short_side": 36,
        "display_aspect": "square",
        "test_views": {"clips": 2, "crops": 3},
        "verified_on": {"videos": 8, "clips": 48},
        "artifacts": [
            {
                "file": path.name,
                "format": "executorch-xnnpack",
                "precision": "fp32",
                "sha256": sha256_of(path),
                "bytes": path.stat().st_size,
                "top1": 0.25,
                "top5": 1.0,
                "agreement": 1.0,
                "clip_agreement": 1.0,
                "latency_ms": 0.5,
                "threads": 2,
            }
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _demo_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vidaccel_train.demo", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------- the command line


def test_a_missing_or_modified_artifact_stops_the_command_with_one_error_line(export_dir, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(export_dir, tampered)
    program = tampered / "model_fp32.pte"
    data = bytearray(program.read_bytes())
    data[len(data) // 2] ^= 0xFF
    program.write_bytes(bytes(data))
    (tmp_path / "no_manifest").mkdir()
    cases = [
        (tmp_path / "missing" / "export", f"{tmp_path / 'missing' / 'export'} does not exist"),
        (tampered, f"refusing {program}: its sha256"),
        (tmp_path / "no_manifest", "no manifest.json in this folder"),
    ]
    for artifact, message in cases:
        result = _demo_cli(artifact, "--port", _free_port())
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and message in lines[0]
        assert result.stdout == ""  # nothing served

    usage = _demo_cli("--help")
    assert usage.returncode == 0 and "--host" in usage.stdout and "--port" in usage.stdout
    # --examples as predict takes inputs: one that holds no video stops the command the same way.
    (tmp_path / "empty").mkdir()
    for examples, message in [(tmp_path / "empty", "no video files"), (tmp_path / "nope", "no such file or folder")]:
        result = _demo_cli(export_dir, "--port", _free_port(), "--examples", examples)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: --examples {examples}: {message}")


# ---------------------------------------------------------------------------------- the page


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    """The demo on a free port of 127.0.0.1, its audit log, and what it printed."""
    with _serving(export_dir, tmp_path_factory.mktemp("server")) as served:
        yield served


@contextlib.contextmanager
def _serving(export: Path, folder: Path):
    """The demo of ``export`` on a free port of 127.0.0.1, audited, until the block ends."""
    pytest.importorskip("gradio", reason="the demo's optional dependencies are not installed: pip install -e '.[demo]'")
    port = _free_port()
    audit, output = folder / "audit.log", folder / "output.log"
    with open(output, "w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-c", AUDITED_DEMO, str(audit), str(export), "--port", str(port)],
            cwd=REPO,
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while url not in output.read_text():
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not start within 120 s: " + output.read_text()[-3000:]
            time.sleep(0.2)
        yield {"url": url, "audit": audit, "output": output}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium that logs every request and can resolve no name: anything but
    127.0.0.1 would fail, and shows in the performance log."""
    with _chromium() as driver:
        yield driver


@contextlib.contextmanager
def _chromium(*arguments: str):
    """Headless Chromium as :func:`browser` starts it, with more command-line ``arguments``."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[demo]'")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("chromium and chromium-driver are not installed (as root: bash scripts/setup.sh demo)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1500",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        *arguments,
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def _open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))


def _upload(driver, path: Path, timeout: float = 120) -> str:
    """Upload ``path`` into the page and wait for the answer; returns the status line."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))

    def finished(d):
        status = d.find_element(By.ID, "status")
        return status.find_elements(By.CSS_SELECTOR, ".error") or status.text.endswith("done.")

    WebDriverWait(driver, timeout).until(finished)
    return driver.find_element(By.ID, "status").text


def _clear_upload(driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))


@pytest.fixture(scope="module")
def rotated_video(tmp_path_factory):
    """A phone-style recording: frames stored turned, a display matrix saying 90 degrees clockwise."""
    return write_case(tmp_path_factory.mktemp("videos") / "phone.mp4", count=30, fps=10, rotation_cw=90)


def test_a_rotated_upload_plays_upright_and_gets_predicts_answer(browser, server, rotated_video, export_dir, tmp_path):
    from selenium.webdriver.common.by import By

    from vidaccel_train.data.video_io import probe, read_frames_at

    video = rotated_video.path
    stored = probe(video)
    assert (stored.coded_width, stored.coded_height) == (48, 64) and stored.rotation == 90  # stored portrait
    _open_page(browser, server["url"])
    status = _upload(browser, video)
    assert status.startswith("phone.mp4: 3.0 s, 64×48 upright, stored turned 90°") and status.endswith("done."), status

    expected = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train.predict",
            str(export_dir / "model_fp32.pte"),
            str(video),
            "--json",
            "--topk",
            "5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert expected.returncode == 0, expected.stderr
    predictions = json.loads(expected.stdout)["predictions"]
    shown_top1 = browser.find_element(By.CSS_SELECTOR, "#top5 [data-testid=label-output-value]").text
    assert shown_top1 == predictions[0]["label"]
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#top5 .confidence-set dt")]
    assert shown == [p["label"] for p in predictions[: len(shown)]] and len(shown) == len(CLASSES)

    # The player has an upright H.264 copy the browser decodes: landscape, the frames in order.
    width, height, ready, source = browser.execute_script(
        "const v = document.querySelector('#preview video');"
        "return v ? [v.videoWidth, v.videoHeight, v.readyState, v.currentSrc] : [0, 0, 0, ''];"
    )
    assert (width, height) == (64, 48) and ready >= 2, (width, height, ready)
    assert urllib.parse.urlsplit(source).hostname == "127.0.0.1"
    copy = tmp_path / "preview.mp4"
    with urllib.request.urlopen(source, timeout=30) as response:
        copy.write_bytes(response.read())
    times = [0.05, 1.05, 2.95]
    assert read_indices(read_frames_at(copy, times)) == [rotated_video.expected(t) for t in times]

    latency = browser.find_element(By.ID, "latency").text
    assert "This prediction: decode" in latency and "2 clips × 3 crops" in latency and "timeline: 6 windows" in latency
    assert browser.find_element(By.CSS_SELECTOR, "#timeline img").get_attribute("src")
    card = browser.find_element(By.ID, "card").text
    assert sha256_of(export_dir / "model_fp32.pte") in card and "walk, run, jump, wave" in card

    screenshot = tmp_path / "demo.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    hosts = {
        urllib.parse.urlsplit(url).hostname
        for url in _requested_urls(browser)
        if not url.startswith(("data:", "blob:"))
    }
    assert hosts == {"127.0.0.1"}, hosts


def test_a_file_that_is_not_a_video_shows_one_error_and_the_page_goes_on(browser, server, rotated_video, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not a video\n")
    _open_page(browser, server["url"])
    status = _upload(browser, notes)
    assert status.startswith("error: notes.txt: cannot open as video"), status
    body = browser.find_element(By.TAG_NAME, "body").text
    assert body.lower().count("error") == 1, body  # no toast, no per-component error badges
    assert not browser.find_elements(By.CSS_SELECTOR, "#top5 [data-testid=label-output-value]")
    browser.save_screenshot(str(tmp_path / "error.png"))

    _clear_upload(browser)
    assert _upload(browser, rotated_video.path).endswith("done.")
    assert browser.find_element(By.CSS_SELECTOR, "#top5 [data-testid=label-output-value]").text in CLASSES
    assert "error" not in browser.find_element(By.TAG_NAME, "body").text.lower()


def test_the_server_binds_and_reaches_nothing_but_this_machine(browser, server):
    """Run after the pages above: every address the demo's process bound, connected to or looked
    up is this machine's (no analytics, version check, fonts or share tunnel)."""
    _open_page(browser, server["url"])  # at least one page served
    records = server["audit"].read_text().splitlines()
    binds = [r for r in records if r.startswith("socket.bind")]
    assert binds and all("'127.0.0.1'" in r for r in binds), binds
    for record in records:
        event, address = record.split(" ", 1)
        if address.startswith("('"):
            assert ast.literal_eval(address)[0] in LOOPBACK, record
        elif event == "socket.getaddrinfo":
            assert ast.literal_eval(address) in LOOPBACK | {None}, record


# ---------------------------------------------------------------------------------- the camera tab


@pytest.fixture(scope="module")
def smoke_export(smoke_run) -> Path:
    """The smoke run's export: a model that tells the synthetic motions apart."""
    return smoke_run / "export"


@pytest.fixture(scope="module")
def smoke_spec(smoke_run):
    """The synthetic data the smoke model was trained on (its run config)."""
    from vidaccel_train.data.synthetic import SyntheticSpec

    run_config = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "run_config"
    ]
    synthetic = run_config["data"]["synthetic"]
    return SyntheticSpec(**{**synthetic, "classes": tuple(synthetic["classes"])})


@pytest.fixture(scope="module")
def camera_server(smoke_export, tmp_path_factory):
    with _serving(smoke_export, tmp_path_factory.mktemp("camera_server")) as served:
        yield served


def _camera_file(path: Path, spec, motion: str, clips: int = 4, scale: int = 4) -> Path:
    """A Y4M (yuv420p) of ``clips`` synthetic clips of ``motion`` one after the other, each frame
    scaled up ``scale`` times (nearest), for Chromium's fake camera (which loops it)."""
    import av
    import numpy as np

    from vidaccel_train.data.synthetic import render_clip

    rng = np.random.default_rng(7)
    frames = np.concatenate([render_clip(spec, motion, rng) for _ in range(clips)])
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _camera_labels(driver, url: str, seconds: float) -> tuple[list[str], str]:
    """Open the page's Camera tab, start the camera and read the live top-1 of each window shown
    during ``seconds`` after the first; the labels read and the last status line."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.XPATH, "//button[@role='tab' and contains(., 'Camera')]")
    )
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Camera')]").click()
    # Chromium's fake UI grants the camera: access it, then start streaming ("Record").
    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.XPATH, "//*[@id='camera']//button[contains(., 'Access Webcam')]")
    )
    driver.find_element(By.XPATH, "//*[@id='camera']//button[contains(., 'Access Webcam')]").click()
    WebDriverWait(driver, 30).until(
        lambda d: any(b.is_displayed() for b in d.find_elements(By.CSS_SELECTOR, "#camera button.capture-button"))
    )
    driver.find_element(By.CSS_SELECTOR, "#camera button.capture-button").click()

    def status(d) -> str:
        return d.find_element(By.ID, "live_status").text

    WebDriverWait(driver, 60).until(lambda d: status(d).startswith(("window ", "error")))
    labels, seen, deadline = [], set(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = status(driver)
        assert not line.startswith("error"), line
        window = line.split(":", 1)[0]
        if window not in seen:
            seen.add(window)
            label = driver.find_elements(By.CSS_SELECTOR, "#live_top5 [data-testid=label-output-value]")
            if label:
                labels.append(label[0].text)
        time.sleep(0.15)
    return labels, status(driver)


def test_the_camera_tab_follows_the_motion_the_camera_shows(camera_server, smoke_spec, tmp_path):
    """Chromium's fake camera plays a synthetic motion: the Camera tab's live top-1 settles on
    it (move_left, then in a second browser move_right), the status line gives the window's times,
    frames a second and the model's time, and the page asks nothing of any other host."""
    from selenium.webdriver.common.by import By

    for motion in ("move_left", "move_right"):
        video = _camera_file(tmp_path / f"{motion}.y4m", smoke_spec, motion)
        with _chromium(
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}",
        ) as driver:
            labels, last = _camera_labels(driver, camera_server["url"], seconds=10)
            driver.save_screenshot(str(tmp_path / f"camera_{motion}.png"))
            print(f"{motion}: {labels}; {last}")
            assert len(labels) >= 8 and max(set(labels), key=labels.count) == motion, (motion, labels)
            assert re.fullmatch(r"window [\d.]+–[\d.]+ s: \w+ [\d.]+ · \d+ frames/s received · model \d+ ms.*", last), (
                last
            )
            assert (
                driver.find_element(By.CSS_SELECTOR, "#live_timeline img")
                .get_attribute("src")
                .startswith("data:image/png")
            )
            hosts = {
                urllib.parse.urlsplit(url).hostname
                for url in _requested_urls(driver)
                if not url.startswith(("data:", "blob:"))
            }
            assert hosts == {"127.0.0.1"}, hosts
