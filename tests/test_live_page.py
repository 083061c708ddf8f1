"""The live page (``run --serve``): HTTP endpoints over loopback, then the page itself in headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from onnx_fixtures import grouped, make_encoder, make_model, make_postcard, make_probe, other_agent

from jepa_edge.calib.head import build_head
from jepa_edge.live import LiveServer, LiveServerError, parse_serve
from jepa_edge.live.server import BOUNDARY
from jepa_edge.runtime import PipelineConfig, load_model, open_source, run
from jepa_edge.runtime.capture import CaptureConfig
from jepa_edge.runtime.outputs import named_values, softmax
from jepa_edge.runtime.pipeline import annotate
from jepa_edge.runtime.sources import ArraySource

TIMEOUT_S = 30  # generous deadline for one socket read: a dead server fails the test instead of hanging it
LABELS = {"position": ("regression", ["obj0_x", "obj0_y", "obj1_x", "obj1_y"]),
          "danger": ("classification", ["clear", "obstacle"])}


def sim_frames(n: int) -> list[np.ndarray]:
    src = open_source(f"sim:top?size=32&seed=1&frames={n}")
    src.open()
    frames = [src.read() for _ in range(n)]
    src.close()
    return frames


def fake_frame(i: int) -> tuple[dict, dict]:
    """(record, outputs) shaped like the pipeline's ``frame_record`` for frame ``i``."""
    rng = np.random.default_rng(i)
    outputs = {"position": rng.uniform(0, 1, (1, 4)).astype(np.float32),
               "danger": rng.uniform(-1, 1, (1, 2)).astype(np.float32)}
    record = {"frame": i, "t": 1000.0 + i / 30, "pts": i / 30, "head_version": 1,
              "outputs": named_values(outputs, LABELS),
              "latency_ms": {s: round(float(rng.uniform(0, 5)), 3) for s in ("wait", "read", "preprocess", "infer",
                                                                              "head", "e2e")},
              "dropped": 0, "corrupt": 0}
    return record, outputs


def page_outputs(outputs: dict) -> dict:
    """What an event's ``outputs`` hold: each output's row as a list, classification as probabilities."""
    return {k: (softmax(v[0]) if LABELS[k][0] == "classification" else v[0]).tolist() for k, v in outputs.items()}


def without_outputs(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "outputs"}


def get(url: str, method: str = "GET", **headers: str):
    return urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=TIMEOUT_S)


def read_part(resp) -> bytes:
    """The next JPEG of a multipart/x-mixed-replace body."""
    line = resp.readline()
    while line in (b"\r\n", b"\n"):
        line = resp.readline()
    assert line.strip() == f"--{BOUNDARY}".encode(), line
    headers = {}
    while (line := resp.readline().strip()):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    return resp.read(int(headers["content-length"]))


def read_event(resp) -> dict:
    """The next ``data:`` event of a text/event-stream body (comments and ``retry:`` skipped)."""
    data = []
    while True:
        line = resp.readline()
        assert line, "the event stream ended"
        line = line.rstrip(b"\n")
        if line.startswith(b"data: "):
            data.append(line[6:])
        elif not line and data:
            return json.loads(b"\n".join(data))


@pytest.fixture
def server():
    with LiveServer(port=0, annotate_size=64, max_fps=1000) as live:
        yield live


# ---- without a browser -------------------------------------------------------------------------
def test_routes_types_state_and_read_only(server):
    page = get(server.url)
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = page.read().decode()
    for needle in ('src="/stream.mjpg"', 'id="frame"', 'id="outputs"', 'id="latency"', 'id="fleet"',
                   'new EventSource("/events")'):
        assert needle in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere (robot offline)
    assert get(server.url + "healthz").read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server.url + "state.json")
    assert err.value.code == 503  # no frame yet

    image = sim_frames(1)[0]
    record, outputs = fake_frame(7)
    server.frame(image, record, outputs, LABELS)
    state = get(server.url + "state.json")
    assert state.headers["Content-Type"] == "application/json"
    got = json.loads(state.read())
    assert {k: got[k] for k in without_outputs(record)} == without_outputs(record)
    np.testing.assert_allclose(got["outputs"]["danger"], page_outputs(outputs)["danger"], atol=1e-6)
    assert got["outputs"]["position"] == page_outputs(outputs)["position"]
    assert got["labels"] == {k: {"kind": kind, "labels": cols} for k, (kind, cols) in LABELS.items()}
    assert "fleet" not in got
    assert get(server.url + "stream.mjpg", "HEAD").headers["Content-Type"] == \
        f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    assert get(server.url + "events", "HEAD").headers["Content-Type"] == "text/event-stream"
    head = get(server.url, "HEAD")
    assert head.status == 200 and head.read() == b""

    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(server.url + "state.json", data=b"x=1", method=method),
                                   timeout=TIMEOUT_S)
        assert err.value.code == 405 and err.value.headers["Allow"] == "GET, HEAD", method
    for path, code in (("nope", 404), ("", 403)):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(server.url + path, **({"Host": f"rebound.example:{server.port}"} if code == 403 else {}))
        assert err.value.code == code


def test_mjpeg_parts_are_the_annotated_frames(server):
    """Fed one at a time, each JPEG part decodes to the frame just fed, drawn as ``annotate`` draws it."""
    frames = sim_frames(3)
    frames[1] = 255 - frames[0]  # clearly different consecutive frames
    fed = [fake_frame(i) for i in range(3)]
    expected = [annotate(img, outputs, LABELS, 64, f"#{rec['frame']} head v1")
                for img, (rec, outputs) in zip(frames, fed)]
    server.frame(frames[0], *fed[0], LABELS)  # before anyone watches: encoded once the stream opens
    resp = get(server.url + "stream.mjpg")
    assert resp.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    for i in range(3):
        if i:
            server.frame(frames[i], *fed[i], LABELS)
        img = cv2.imdecode(np.frombuffer(read_part(resp), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (64, 64, 3)
        err = [np.abs(img.astype(int) - e.astype(int)).mean() for e in expected]
        assert err[i] < 10 and err[i] == min(err), err
    resp.close()


def test_events_equal_fed_records_and_carry_fleet(server):
    resp = get(server.url + "events")
    assert resp.headers["Content-Type"] == "text/event-stream"
    image = sim_frames(1)[0]
    fleet = {"agent": "agentB", "peers": [{"name": "agentA", "head_version": 3, "layout_version": 2}],
             "inbox": {"accepted": 4, "refused": 1}}
    for i in range(4):  # lock-step: the next frame is fed after its predecessor's event arrived
        if i == 2:
            server.set_fleet(fleet)
            fleet["peers"].clear()  # the server keeps its own copy
        record, outputs = fake_frame(i)
        outputs["position"][0, 0] = float("nan")  # a diverging probe must not break JSON.parse
        record["outputs"]["position.obj0_x"] = float("nan")
        server.frame(image, record, outputs, LABELS)
        event = read_event(resp)
        assert event["outputs"]["position"][0] is None  # the page groups the columns per output again
        want = page_outputs(outputs)
        assert event["outputs"]["position"][1:] == want["position"][1:]
        np.testing.assert_allclose(event["outputs"]["danger"], want["danger"], atol=1e-6)
        assert {k: event[k] for k in without_outputs(record)} == without_outputs(record)
        assert event["labels"]["danger"] == {"kind": "classification", "labels": ["clear", "obstacle"]}
        if i >= 2:
            assert event["fleet"]["peers"] == [{"name": "agentA", "head_version": 3, "layout_version": 2}]
            assert event["fleet"]["inbox"] == {"accepted": 4, "refused": 1}
        else:
            assert "fleet" not in event
    assert json.loads(get(server.url + "state.json").read()) == event
    resp.close()


def test_close_ends_open_streams_and_stops_listening():
    live = LiveServer(port=0, annotate_size=64, max_fps=1000).start()
    record, outputs = fake_frame(0)
    live.frame(sim_frames(1)[0], record, outputs, LABELS)
    events, video = get(live.url + "events"), get(live.url + "stream.mjpg")
    read_event(events), read_part(video)  # both handlers are inside their streaming loops
    live.close()
    for resp in (events, video):
        while resp.read(65536):  # to the end of the body: the server ended the response
            pass
    with pytest.raises(urllib.error.URLError):
        get(live.url + "healthz")
    live.close()  # idempotent


def test_stalled_viewer_never_blocks_frames():
    """A viewer that stops reading fills its socket; frames, other viewers and the state go on regardless."""
    wmem = Path("/proc/sys/net/ipv4/tcp_wmem")
    budget = 2 * (int(wmem.read_text().split()[2]) if wmem.exists() else 4 << 20) + (1 << 20)  # > any buffering
    live = LiveServer(port=0, annotate_size=256, jpeg_quality=95, max_fps=1000).start()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", live.port))
    stalled.sendall(b"GET /stream.mjpg HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
    reader = get(live.url + "stream.mjpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 256, 256, 3), np.uint8)  # incompressible JPEGs
    outcome: dict = {}

    def feed() -> None:
        sent, i = 0, 0
        try:
            while sent < budget:
                record, outputs = fake_frame(i)
                live.frame(noise[i % len(noise)], record, outputs, LABELS)
                sent += len(read_part(reader))  # the stalled viewer was offered this part too
                i += 1
            outcome["frames"] = i
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = repr(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    feeder.join(120)  # generous: the test fails here instead of hanging when frame() blocks
    try:
        assert not feeder.is_alive() and "frames" in outcome, \
            f"frame() or the stream blocked behind a viewer that does not read ({outcome.get('error')})"
        n = outcome["frames"]
        assert json.loads(get(live.url + "state.json").read())["frame"] == n - 1
    finally:
        reader.close()
        live.close()
    try:  # close() ended the connection the viewer never read from, instead of leaving its thread blocked
        assert not [t for t in threading.enumerate() if t.name == "live-conn"]
    finally:
        stalled.close()


def test_addresses_refused_with_one_line_errors():
    for host in ("0.0.0.0", "192.168.1.10", "::", "robot.example"):
        with pytest.raises(LiveServerError, match="not a loopback address") as err:
            LiveServer(host, 0)  # refused before anything binds
        assert "\n" not in str(err.value)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(LiveServerError, match="already in use") as err:
            LiveServer("127.0.0.1", taken.getsockname()[1]).start()
        assert "\n" not in str(err.value)
    finally:
        taken.close()
    assert parse_serve("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_serve("[::1]:0") == ("::1", 0) and parse_serve("8081") == ("127.0.0.1", 8081)
    for bad in ("::1:80", "127.0.0.1:", "127.0.0.1:http", "host:70000"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            parse_serve(bad)


# ---- in a real browser ---------------------------------------------------------------------------
READ_PAGE_JS = """
const rows = [...document.querySelectorAll('#outputs tbody tr')].map((tr) => ({
  name: tr.dataset.name, kind: tr.dataset.kind,
  top: tr.querySelector('.top') ? tr.querySelector('.top').textContent : null,
  values: [...tr.querySelectorAll('.v')].map((s) => [s.dataset.label, s.dataset.value, s.textContent])}));
const peers = [...document.querySelectorAll('#fleet-peers tbody tr')].map(
  (tr) => [...tr.cells].map((td) => td.textContent));
return {frame: document.getElementById('frame').textContent, rows: rows, peers: peers,
        fleetHidden: document.getElementById('fleet').hidden,
        plotted: Number(document.getElementById('latency').dataset.n)};
"""
IMAGE_SUM_JS = """
const img = document.getElementById('stream');
if (!img.complete || img.naturalWidth === 0) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d');
g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let s = 0;
for (let i = 0; i < d.length; i += 4) s = (s * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 1000000007;
return [img.naturalWidth, s];
"""


def browser_head(enc) -> object:
    """Position of two objects (through a postcard) + an obstacle flag: what the page draws."""
    target = other_agent(enc.latent_dim)
    pos = make_probe(target, "position", 4, seed=11)
    danger = make_probe(enc.agent, "danger", 2, seed=21, task="classification")
    danger = dataclasses.replace(danger, labels=["clear", "obstacle"], bias=danger.bias + np.float32([0, 3]))
    # the flag is raised (the top label is not the first): a page that shows the first label fails
    return build_head(enc.fingerprint, enc.latent_dim, make_postcard(enc.agent, target, seed=1), [danger, pos])


@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("needs a browser: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    enc = make_encoder(height=16, width=16, latent_dim=8, seed=2)
    head = browser_head(enc)
    model = load_model(make_model(tmp_path / "m.onnx", enc, "head_inputs"), "ort-cpu")
    frames = np.stack(sim_frames(48))
    live = LiveServer(port=0, annotate_size=256).start()
    live.set_fleet({"agent": enc.name, "peers": [{"name": "agentA", "head_version": 3, "outputs": "position"}],
                    "inbox": {"accepted": 2, "refused": 0}})
    stop, lines_path, png = threading.Event(), tmp_path / "frames.jsonl", tmp_path / "live_page.png"
    cfg = PipelineConfig(capture=CaptureConfig(realtime=True))  # paced at 30 fps: the CPU is shared
    with open(lines_path, "w", encoding="utf-8") as out:
        loop = threading.Thread(target=run, args=(model, ArraySource(frames, fps=30.0, loop=True), cfg),
                                kwargs={"head": head, "sinks": [live], "out": out, "stop": stop}, daemon=True)
        loop.start()
        try:
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,900"):
                options.add_argument(arg)
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
            driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
            try:
                driver.get(live.url)
                wait = WebDriverWait(driver, 15, poll_frequency=0.05)  # deadline for a loaded machine, not a bound
                first = int(wait.until(lambda d: d.find_element("id", "frame").text.strip().isdigit() and
                                       d.find_element("id", "frame").text))
                wait.until(lambda d: int(d.find_element("id", "frame").text) >= first + 2)  # frames advance
                video = wait.until(lambda d: d.execute_script(IMAGE_SUM_JS))
                assert video[0] == 256  # the MJPEG stream is shown, at annotate_size
                wait.until(lambda d: (d.execute_script(IMAGE_SUM_JS) or video)[1] != video[1])  # and it moves
                shown = wait.until(lambda d: (s := d.execute_script(READ_PAGE_JS))["plotted"] >= 2 and s)
                driver.save_screenshot(str(png))
                severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
                assert not severe, severe  # no script error, nothing blocked by the page's CSP
            finally:
                driver.quit()
        finally:
            stop.set()
            loop.join()

    records = {r["frame"]: r for r in map(json.loads, lines_path.read_text().splitlines())}
    record = records[int(shown["frame"])]  # the JSON line of the frame the page showed
    rows = {r["name"]: r for r in shown["rows"]}
    named = grouped(record["outputs"])
    assert set(rows) == set(named) - {"z", "z_mapped"} == {"position", "danger"}
    for o in head.outputs:
        if o.name not in rows:
            continue
        want, row = named[o.name], rows[o.name]
        assert row["kind"] == o.kind and [v[0] for v in row["values"]] == list(o.labels)
        for (label, text, full), value in zip(row["values"], want):
            assert full == f"{label} {text}" and abs(float(text) - value) <= 5e-4 + 1e-9, (o.name, label)
        if o.kind == "classification":
            assert row["top"] == o.labels[int(np.argmax(want))]
    assert rows["position"]["values"][0][0] == "obj0_x" and rows["danger"]["top"] in ("clear", "obstacle")
    assert not shown["fleetHidden"] and shown["peers"] == [["agentA", "3", "position"]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    if os.environ.get("LIVE_PAGE_SCREENSHOT"):  # a copy for a person to look at
        shutil.copy(png, os.environ["LIVE_PAGE_SCREENSHOT"])
