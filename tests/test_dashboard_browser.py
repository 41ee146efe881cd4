"""The /dlogit panel rendered by headless Chromium.

Chromium is driven over the DevTools protocol (its websocket, with tornado's
client) so the test can read what the *browser* holds: the BokehJS document's
data sources after the server pushed them over the Bokeh websocket.  (Bokeh 3
renders widgets in shadow DOM, which ``--dump-dom`` does not serialize.)

Skipped when no Chromium is installed.  Set ``DLOGIT_SCREENSHOT_DIR`` to keep
the screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dlogit.monitor import PLUGIN_NAME, SCHEDULER_PRELOAD

pytestmark = pytest.mark.timeout(240)

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")) if p),
    None,
)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")

TOPIC = "dlogit"


def _events(run, steps, max_iter, slow_worker=0.03, **params):
    import math

    steps = list(steps)
    start = {"type": "start", "run": run, "time": time.time(),
             "params": {"solver": "lbfgs", "l2": 1e-4, "lr": None, "max_iter": max_iter,
                        "tol": 1e-8, "fit_intercept": True, "n_rows": 1_000_000,
                        "n_features": 20, "n_chunks": 8, "dtype": "float32",
                        "workers": ["tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002",
                                    "tcp://127.0.0.1:40003"],
                        "mode": "distributed", **params}}
    prog = []
    for i in range(0, len(steps), 500):
        chunk = steps[i:i + 500]
        prog.append({
            "type": "progress", "run": run, "time": time.time(), "step": chunk,
            "loss": [0.69 * math.exp(-s / 400) + 0.05 + 0.002 * math.sin(s / 7) for s in chunk],
            "grad_norm": [math.exp(-s / 150) for s in chunk],
            "step_seconds": [0.012 + 0.004 * ((s * 7919) % 13) / 13 for s in chunk],
            "rows_per_s": 8e7 + 1e6 * (i // 500), "bytes_per_s": 6.4e9 - 5e7 * (i // 500),
            "worker_seconds": {"tcp://127.0.0.1:40001": 0.011, "tcp://127.0.0.1:40002": 0.012,
                               "tcp://127.0.0.1:40003": slow_worker},
        })
    return start, prog


class Browser:
    """A headless Chromium page driven through the DevTools protocol."""

    def __init__(self, url: str, profile: Path):
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "--remote-allow-origins=*",
             "--window-size=1400,1300", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.profile = profile
        self.ws = None
        self._id = 0

    async def connect(self, timeout: float = 30.0) -> None:
        from tornado.websocket import websocket_connect

        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        def page_targets():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                return [t for t in json.load(r) if t.get("type") == "page"]

        while True:
            pages = await asyncio.to_thread(page_targets)
            if pages:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no page target")
            await asyncio.sleep(0.05)
        self.ws = await websocket_connect(pages[0]["webSocketDebuggerUrl"],
                                          max_message_size=64 << 20)

    async def call(self, method: str, **params):
        self._id += 1
        mid = self._id
        self.ws.write_message(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), 30)
            if raw is None:
                raise RuntimeError("DevTools connection closed")
            msg = json.loads(raw)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    async def js(self, expression: str):
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            return None
        return res["result"].get("value")

    async def wait_js(self, expression: str, pred, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value is not None and pred(value):
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"browser state never matched; last value: {value!r}")

    async def screenshot(self, path: Path) -> None:
        res = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(res["data"]))

    def close_ws(self) -> None:
        """Close the DevTools websocket (call inside the event loop that opened it)."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# what the page holds, read from BokehJS models (names set in dlogit/monitor/panel.py)
STATE_JS = """(() => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!doc) return null;
  const m = (n) => doc.get_model_by_name(n);
  const steps = m('dlogit-steps'), tail = m('dlogit-tail'), info = m('dlogit-info');
  if (!steps || !info) return null;
  const last = (a) => a.length ? a[a.length - 1] : null;
  return {points: steps.data.step.length, tail: tail.data.step.length,
          last_step: last(Array.from(steps.data.step)),
          info: info.text, run: m('dlogit-run-select').value,
          options: m('dlogit-run-select').options.map(o => Array.isArray(o) ? o[0] : o),
          workers: Array.from(m('dlogit-workers').data.worker),
          rates: m('dlogit-rates').data.step.length,
          loss_log_visible: m('dlogit-loss-log').visible,
          table: m('dlogit-params-table').text,
          classes: Array.from(m('dlogit-classes').data.label),
          path_points: m('dlogit-path').data.x.length,
          path_best: Array.from(m('dlogit-path-best').data.x),
          path_visible: m('dlogit-path-fig').visible,
          path_info: m('dlogit-path-info').text};
})()"""


# the rendered text of the parameters table (inside Bokeh's shadow roots)
TABLE_TEXT_JS = """(() => {
  let out = '';
  const walk = (n) => {
    if (n.shadowRoot) walk(n.shadowRoot);
    if (n.tagName === 'TABLE' && n.classList.contains('dlogit-params')) out += n.textContent;
    for (const c of (n.children || [])) walk(c);
  };
  walk(document.body);
  return out;
})()"""


@needs_chromium
def test_panel_in_headless_chromium(tmp_path):
    from distributed import Client, LocalCluster

    shots = Path(os.environ.get("DLOGIT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"preload": [SCHEDULER_PRELOAD]}) as cluster, \
            Client(cluster) as client:
        state = cluster.scheduler.plugins[PLUGIN_NAME].state
        url = f"http://127.0.0.1:{cluster.scheduler.http_server.port}/dlogit"

        def post(run, steps, max_iter, **params):
            start, prog = _events(run, steps, max_iter, **params)
            client.log_event(TOPIC, start)
            for ev in prog:
                client.log_event(TOPIC, ev)

        def wait_state(run, n_steps):
            deadline = time.monotonic() + 20
            while not (state.get(run) and state.get(run).steps.seen == n_steps):
                assert time.monotonic() < deadline, "events did not reach the scheduler"
                time.sleep(0.05)

        long_run = "chromium-test-1-0-aaaaaa"  # longer than max_points: downsampled
        post(long_run, range(1, 25_002), 40_000)
        wait_state(long_run, 25_001)
        short_run = "chromium-test-1-1-bbbbbb"
        post(short_run, range(1, 1_201), 3_000, family="multinomial", n_classes=3,
             classes=["bird", "cat", "dog"], class_counts=[600_000, 300_000, 100_000])
        wait_state(short_run, 1_200)

        browser = Browser(url, tmp_path / "profile")

        async def scenario():
            try:
                await steps()
            finally:
                browser.close_ws()

        async def steps():
            await browser.connect()
            # 1. the newest run is shown with every one of its points
            # (one server update reaches the browser as several model changes: wait for all)
            v = await browser.wait_js(
                STATE_JS, lambda v: v["points"] == 1_200 and 'data-points="1200"' in v["info"]
                and f"<td>{short_run}</td>" in v["table"] and len(v["options"]) == 3
                and len(v["workers"]) == 3 and v["rates"] == 3)
            assert v["last_step"] == 1_200 and v["tail"] == 0
            assert short_run in v["info"]
            assert v["classes"] == ["dog", "cat", "bird"]  # the largest class drawn on top
            assert not v["path_visible"] and "No regularization path" in v["path_info"]
            assert v["options"][1:] == [short_run, long_run]
            assert v["workers"] == sorted(v["workers"]) and len(v["workers"]) == 3
            assert v["rates"] == 3
            for key in ("status", "ETA", "params.solver", "params.n_rows"):
                assert f"<th>{key}</th>" in v["table"]
            await asyncio.sleep(1.0)  # let the canvas paint
            await browser.screenshot(shots / "dlogit-panel.png")

            # 2. live: more steps arrive and the periodic callback streams them in
            _, prog = _events(short_run, range(1_201, 1_501), 3_000)
            for ev in prog:
                client.log_event(TOPIC, ev)
            v = await browser.wait_js(STATE_JS, lambda v: v["points"] == 1_500)
            assert v["last_step"] == 1_500

            # 3. run selector: pick the long run in the page; the server sends its
            #    downsampled series (stored points, plus a 2-point tail when the last
            #    step fell between samples)
            rs = state.get(long_run)
            expected = len(rs.steps)
            expected_tail = 2 if rs.steps.tail_pending() else 0
            assert expected <= state.max_points < rs.steps.seen
            await browser.js(
                f"Bokeh.documents[0].get_model_by_name('dlogit-run-select').value = '{long_run}'"
            )
            v = await browser.wait_js(
                STATE_JS, lambda v: v["run"] == long_run and v["points"] == expected
                and f'data-points="{expected + expected_tail}"' in v["info"]
                and f"<td>{long_run}</td>" in v["table"] and v["tail"] == expected_tail)
            assert v["last_step"] == rs.steps.data["step"][-1]
            # what is drawn (shadow DOM) follows too, not only the model
            cells = await browser.js(TABLE_TEXT_JS)
            assert long_run in cells and short_run not in cells

            # 4. log-scale toggle round-trips through the server
            await browser.js(
                "Bokeh.documents[0].get_model_by_name('dlogit-logscale').active = [0, 1]")
            await browser.wait_js(STATE_JS, lambda v: v["loss_log_visible"] is True)
            await asyncio.sleep(1.0)
            await browser.screenshot(shots / "dlogit-panel-long-run.png")

            # 5. a regularization path arrives: the path view appears with the chosen point
            points = [{"l2": lam, "l1": 0.0, "mean": mean, "std": 0.01, "n_iter": 20,
                       "fold_scores": [mean - 0.01, mean + 0.01], "n_nonzero": None}
                      for lam, mean in ((1e-4, -0.52), (1e-3, -0.48), (1e-2, -0.5))]
            client.log_event(TOPIC, {"type": "path", "run": "chromium-path-1", "time": time.time(),
                                     "scoring": "neg_log_loss", "folds": 2, "points": points,
                                     "best": 1, "done": True})
            v = await browser.wait_js(
                STATE_JS, lambda v: v["path_visible"] and v["path_points"] == 3
                and v["path_best"] == [1e-3] and "chosen: l2 = 0.001" in v["path_info"])
            await browser.js("window.scrollTo(0, document.body.scrollHeight)")
            await asyncio.sleep(1.0)
            await browser.screenshot(shots / "dlogit-panel-path.png")

        try:
            asyncio.run(scenario())
        finally:
            browser.close()
        for name in ("dlogit-panel.png", "dlogit-panel-long-run.png", "dlogit-panel-path.png"):
            png = (shots / name).read_bytes()
            assert png.startswith(b"\x89PNG") and len(png) > 20_000
