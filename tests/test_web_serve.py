"""`soft-dist serve` as a user runs it: the real command in its own process, starting its own Ray instance
and Ray Serve on loopback, answered over real HTTP. Its answers equal `soft-dist predict`'s on the same
files; every kind of bad request gets its status and a JSON error and costs no replica; the page works in
headless Chromium (Debian's package, driven by Selenium through Debian's chromedriver); Ctrl-C stops every
process the command started.

One server for the module (its start takes 15-40 s on 2 cores); the last test stops it. The options and
the deployments as built, without a cluster: tests/test_web_options.py."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soft_dist.bench.predict import write_untrained_model
from soft_dist.bench.process_tree import tree_pids
from soft_dist.bench.shard import make_face_folder
from soft_dist.cli import main
from soft_dist.ports import free_local_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IMAGE_SIZE = 48  # network input of the served model (a ResNet-18 with MTCNN alignment; untrained, seeded)
PROB_TOLERANCE = 1e-5  # the bound; both sides round to 6 decimals
MAX_REQUEST_MB = 1  # small limits, so that the refused requests are small too
MAX_IMAGE_PIXELS = 4_000_000
START_TIMEOUT_S = 180
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # kept after the session (git-ignored)


class Server:
    """The `soft-dist serve` process (its own process group, as a terminal's foreground job) and its URL."""

    def __init__(self, model: Path, tmp: Path):
        self.port = free_local_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "serve.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "soft_dist", "serve", str(model), "--port", str(self.port),
                 "--max-request-mb", str(MAX_REQUEST_MB), "--max-image-pixels", str(MAX_IMAGE_PIXELS),
                 "--max-batch-size", "4"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "RAY_ADDRESS": ""})
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready at" not in self.output():
            assert self.proc.poll() is None, f"soft-dist serve exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"not ready in {START_TIMEOUT_S} s:\n{self.output()}"
            time.sleep(0.5)

    def output(self) -> str:
        return self.log.read_text()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, decoded JSON or text) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            kind = response.getheader("content-type", "")
            return response.status, json.loads(data) if kind.startswith("application/json") else data.decode()
        finally:
            conn.close()

    def post_photo(self, data: bytes, content_type: str = "image/jpeg", path: str = "/predict"):
        return self.request("POST", path, data, {"Content-Type": content_type})

    def post_files(self, files: list[tuple[str, bytes, str]], path: str = "/predict"):
        """multipart/form-data with one file field per (file name, bytes, type)."""
        boundary = "soft-dist-test-boundary"
        parts = []
        for i, (name, data, kind) in enumerate(files):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="photo{i}"; filename="{name}"\r\n'
                         f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def replica_pids(self) -> dict[str, int]:
        """Serve deployment name -> its replica's pid, of this server's processes.

        Ray retitles a replica "ray::ServeReplica:<app>:<deployment>" when idle and
        "...:<deployment>.<method>" while it runs a call (a late health check or request), so the
        method is cut off; deployment names hold no dot.
        """
        out = {}
        for pid in tree_pids(self.proc.pid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if title.startswith("ray::ServeReplica:"):
                out[title.split(":")[-1].split(".")[0]] = pid
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos: LFW faces (as `bench predict` uses), two larger real faces and one photo without a face."""
    import matplotlib.cbook
    import skimage.data

    folder = make_face_folder(tmp_path_factory.mktemp("serve-photos") / "photos", 6, 160)
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").save(folder / "hopper.jpg")
    Image.fromarray(skimage.data.coins()).convert("RGB").save(folder / "coins.jpg")  # no face
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_untrained_model(tmp_path_factory.mktemp("serve-model"), IMAGE_SIZE)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    server = Server(model, tmp_path_factory.mktemp("serve"))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def predicted(model, photos, tmp_path_factory) -> dict[str, dict]:
    """file name -> `soft-dist predict`'s JSON-lines row."""
    out = tmp_path_factory.mktemp("serve-predict") / "rows.jsonl"
    assert main(["predict", str(model), str(photos), "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    return {Path(row["path"]).name: row for row in map(json.loads, out.read_text().splitlines())}


def _assert_same_answer(answer: dict, row: dict) -> None:
    for key in ("status", "face_found", "box", "face_prob", "predicted", "error"):
        if isinstance(row[key], float):
            assert answer[key] == pytest.approx(row[key], abs=PROB_TOLERANCE), key
        else:
            assert answer[key] == row[key], (key, answer, row)
    if row["probabilities"] is None:
        assert answer["probabilities"] is None
    else:
        assert list(answer["probabilities"]) == list(row["probabilities"])  # the model's class order
        np.testing.assert_allclose(list(answer["probabilities"].values()), list(row["probabilities"].values()),
                                   atol=PROB_TOLERANCE, rtol=0)


def test_answers_equal_predict_on_the_same_files(server, photos, predicted):
    assert set(predicted) >= {"astronaut.png", "coins.jpg"} and predicted["coins.jpg"]["status"] == "no_face"
    for name, row in predicted.items():
        data = (photos / name).read_bytes()
        kind = "image/png" if name.endswith(".png") else "image/jpeg"
        status, raw = server.post_photo(data, kind)
        assert status == 200 and raw["file"] == "upload"
        _assert_same_answer(raw, row)
        status, form = server.post_files([(name, data, kind)])
        assert status == 200 and form["file"] == name
        _assert_same_answer(form, row)
    names = sorted(predicted)
    status, batch = server.post_files([(n, (photos / n).read_bytes(), "application/octet-stream") for n in names],
                                      "/predict/batch")
    assert status == 200 and [a["file"] for a in batch["results"]] == names
    for answer in batch["results"]:
        _assert_same_answer(answer, predicted[answer["file"]])
    # the aligned crop, on request: a JPEG of the model's input size
    status, cropped = server.request("POST", "/predict?crop=1", (photos / "hopper.jpg").read_bytes(),
                                     {"Content-Type": "image/jpeg"})
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(cropped["face_jpeg_base64"]))).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_metadata_and_health(server, model):
    status, card = server.request("GET", "/metadata")
    assert status == 200 and card["format"] == "soft-dist-model-card/1" and card["num_classes"] == 7
    assert card["source"]["model_file"] == str(model) and card["serving"]["max_batch_size"] == 4
    status, health = server.request("GET", "/healthz")
    assert status == 200 and health["status"] == "ok"


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


def test_every_bad_request_gets_its_status_and_a_json_error_and_costs_no_replica(server, photos, predicted):
    face = (photos / "hopper.jpg").read_bytes()
    replicas = server.replica_pids()
    assert set(replicas) == {"gateway", "align", "classify"}
    cases = [  # (what, request, status, words of the error)
        ("body over the size limit", lambda: server.post_photo(b"\xff" * (MAX_REQUEST_MB * 1024 * 1024 + 1)),
         413, "limit"),
        ("text body", lambda: server.post_photo(b"hello", "text/plain"), 415, "text/plain"),
        ("JSON body", lambda: server.post_photo(b"{}", "application/json"), 415, "application/json"),
        ("text file in a form", lambda: server.post_files([("notes.txt", b"hi", "text/plain")]), 415, "notes.txt"),
        ("not an image", lambda: server.post_photo(b"\x00\x01 definitely not a photo"), 422, "not an image"),
        ("empty body", lambda: server.post_photo(b""), 422, "empty"),
        ("truncated JPEG", lambda: server.post_photo(face[: len(face) // 3]), 422, "truncated"),
        ("too many pixels", lambda: server.post_photo(_png(2500, 2000), "image/png"), 422, "5,000,000 pixels"),
        ("two photos to /predict", lambda: server.post_files([("a.jpg", face, "image/jpeg")] * 2), 413, "/predict/batch"),
        ("33 photos to /predict/batch", lambda: server.post_files([("a.jpg", b"x", "image/jpeg")] * 33,
                                                                  "/predict/batch"), 413, "more than 32 photos"),
        ("a form cut short", lambda: server.request(
            "POST", "/predict", b"--b\r\nContent-Disposition: form-data; name=x; filename=a.jpg\r\n\r\nabc",
            {"Content-Type": "multipart/form-data; boundary=b"}), 422, "no file"),
        ("a form without its boundary", lambda: server.request(
            "POST", "/predict", face, {"Content-Type": "multipart/form-data"}), 400, "could not be read"),
        ("form without a file", lambda: server.request(
            "POST", "/predict", b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--\r\n",
            {"Content-Type": "multipart/form-data; boundary=b"}), 422, "no file"),
        ("raw body to /predict/batch", lambda: server.post_photo(face, path="/predict/batch"), 415, "multipart"),
        ("unknown route", lambda: server.request("GET", "/nope"), 404, "no route"),
        ("wrong method", lambda: server.request("GET", "/predict"), 405, "POST"),
    ]
    for what, send, status, words in cases:
        got, answer = send()
        assert got == status, (what, got, answer)
        assert isinstance(answer, dict) and words in answer["error"], (what, answer)
    # chunked upload without a length: refused before it is read
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/predict", body=iter([face]), headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    conn.close()
    # in a batch, a bad photo gets its own status while the others are answered
    status, batch = server.post_files([("hopper.jpg", face, "image/jpeg"), ("junk.jpg", b"junk", "image/jpeg")],
                                      "/predict/batch")
    assert status == 200 and [a["status"] for a in batch["results"]] == ["ok", "unreadable"]
    _assert_same_answer({**batch["results"][0]}, predicted["hopper.jpg"])
    # the same replicas, still answering
    assert server.replica_pids() == replicas
    status, answer = server.post_photo(face)
    assert status == 200
    _assert_same_answer(answer, predicted["hopper.jpg"])


def _chromium_driver(profile: Path):
    """Selenium on Debian's chromium and chromedriver (nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, ("the page test needs Debian's chromium and chromium-driver packages "
                                "(apt-get install chromium chromium-driver; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=900,700", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_the_page_classifies_a_photo_in_headless_chromium(server, photos, predicted, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    classes = list(predicted["hopper.jpg"]["probabilities"])
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a photo")
    browser = _chromium_driver(tmp_path / "chromium-profile")
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "classes" in b.find_element(By.ID, "model").text)
        assert all(c in browser.find_element(By.ID, "model").text for c in classes)

        def submit(path: Path) -> str:
            browser.execute_script("document.body.dataset.state = ''")
            browser.find_element(By.ID, "photo").send_keys(str(path))
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
            return browser.find_element(By.ID, "message").text

        message = submit(photos / "hopper.jpg")
        row = predicted["hopper.jpg"]
        assert message.startswith(f"hopper.jpg: {row['predicted']} (")
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert sorted(b.get_attribute("data-label") for b in bars) == sorted(classes)
        assert bars[0].get_attribute("data-label") == row["predicted"] and "top" in bars[0].get_attribute("class")
        crop = browser.find_element(By.ID, "crop")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", crop) == IMAGE_SIZE
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "serve_page.png"))

        assert "no face found" in submit(photos / "coins.jpg")
        assert browser.find_element(By.ID, "result").get_attribute("hidden") is not None
        assert "notes.txt: the request body has type 'text/plain'" in submit(text_file)
        assert "error" in browser.find_element(By.ID, "message").get_attribute("class")
    finally:
        browser.quit()


def test_the_load_generator_under_malformed_requests(server, photos, predicted):
    """`bench serve`'s load generator: concurrent clients, a quarter of the requests malformed; every good
    request gets predict's answer, every malformed one its 422, and the latencies are those of good ones."""
    from soft_dist.bench.serve import _Expected, load_level

    names = sorted(n for n in predicted if n != "coins.jpg")
    got = load_level(server.port, [(photos / n).read_bytes() for n in names],
                     _Expected([predicted[n] for n in names]), concurrency=4, requests=24, seconds=120,
                     malformed=0.25)
    assert got["wrong"] == [] and (got["good"], got["malformed"]) == (18, 6)
    assert 0 < got["p50_ms"] <= got["p95_ms"] <= got["p99_ms"] and got["requests_per_s"] > 0
    # the check itself catches a wrong answer
    wrong = _Expected([{**predicted[n], "predicted": "not-a-class"} for n in names])
    assert len(load_level(server.port, [(photos / names[0]).read_bytes()], wrong, 1, 2, 60, 0)["wrong"]) == 2


def test_ctrl_c_stops_every_process_it_started(server):
    """Last: the terminal's Ctrl-C (SIGINT to the whole process group) ends the command cleanly."""
    started = tree_pids(server.proc.pid)
    assert len(started) > 5  # the command, GCS, raylet, Serve's controller, proxy and replicas, ...
    os.killpg(server.proc.pid, signal.SIGINT)
    assert server.proc.wait(timeout=120) == 0, server.output()
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in started if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"still running after Ctrl-C: {alive}"
    lines = server.output().splitlines()
    assert len(lines) == 2 and "ready at" in lines[0] and lines[1] == "serve: stopping", lines
