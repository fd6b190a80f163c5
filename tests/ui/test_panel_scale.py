"""The vGPU panel with 200 kernels and leases in the pool, in Chromium: correct, and how fast.

Real parts, as cheap as real gets: two workers (host devices; a host device takes 100 slices of
1 %), a Jupyter server with a 64 MiB / 1 % profile, KERNELS real kernels started by REST, and the
rest of the 200 as leases allocated through the worker client (half by this server's principal,
labelled like notebooks, half by another principal). The server's principal is the workers' admin,
so the pool shows all 200 (the admin's view). The samples stream every 0.25 s.

Asserted (correctness only): the panel lists exactly the server's kernels, and its lease count is
the API's. Printed (no timed assertion; speed belongs in benchmarks/): the time from the page's start
to the panel listing all of it, the time from clicking its tab to it shown with every chart drawn,
the frame times (rAF), renders and the main thread's long tasks (> 50 ms) over STREAM_S seconds of
live samples. TF_PANEL_SCALE_KERNELS sets how many of the 200 are real kernels (default 6; 100
runs in about 80 s on 2 cores); TF_PANEL_SCALE_OUT writes the figures as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from typing import Any

import pytest
from ui_helpers import CHROMIUM, CHROMIUM_ARGS, NO_CHROMIUM, BrowserLog, quiet_lab, wait_for

from tf_jupyter.profiles import Profile, ProfileStore
from tf_jupyter.pytest_plugin import JupyterServerProcess
from tf_remoting.pytest_plugin import WorkerProcess

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

MiB = 1 << 20
TOTAL = 200
KERNELS = int(os.environ.get("TF_PANEL_SCALE_KERNELS", "6"))
STREAM_S = 10

# Render marks, long tasks, and when the panel first shows `kernels` kernel cards and `leases`
# leases (it renders while its tab is closed too), from the page's start.
PERF_JS = """
window.__tfPerf = { marks: [], longtasks: [], complete: null, opened: null, shown: null };
window.__tfDone = () => {
  const panel = document.getElementById('tf-vgpu-panel');
  const count = panel && panel.querySelector('[data-testid="tf-vgpu-lease-count"]');
  return Boolean(panel && panel.querySelectorAll('[data-testid="tf-vgpu-kernel"]').length === %(kernels)d
    && count && Number(count.dataset.count) === %(leases)d);
};
new PerformanceObserver(list => {
  for (const e of list.getEntries()) {
    if (e.name === 'tf-vgpu-panel-rendered') window.__tfPerf.marks.push(e.startTime);
  }
}).observe({ type: 'mark', buffered: true });
new PerformanceObserver(list => {
  for (const e of list.getEntries()) window.__tfPerf.longtasks.push([e.startTime, e.duration]);
}).observe({ type: 'longtask', buffered: true });
document.addEventListener('DOMContentLoaded', () => {
  const observer = new MutationObserver(() => {
    if (window.__tfDone()) {
      window.__tfPerf.complete = performance.now();
      observer.disconnect();
    }
  });
  observer.observe(document.body, { childList: true, subtree: true, attributes: true, characterData: true });
});
"""

# Clicks the panel's tab; resolves with the ms until it is visible with every chart drawn (fails
# after `limit` ms, saying what it saw).
OPEN_JS = """limit => new Promise((resolve, reject) => {
  const perf = window.__tfPerf;
  const drawn = () => {
    const panel = document.getElementById('tf-vgpu-panel');
    if (!panel || panel.offsetWidth === 0 || !window.__tfDone()) return false;
    const canvases = Array.from(panel.querySelectorAll('[data-testid="tf-vgpu-chart"] canvas'));
    return canvases.every(c => c.width > 0);
  };
  const finish = () => {
    perf.shown = performance.now();
    resolve(perf.shown - perf.opened);
  };
  const poll = () => {
    if (drawn()) return finish();
    if (performance.now() - perf.opened > limit) {
      const panel = document.getElementById('tf-vgpu-panel');
      return reject(new Error(`panel not shown with its charts: width ${panel?.offsetWidth}, ` +
                              `all listed ${window.__tfDone()}`));
    }
    requestAnimationFrame(poll);
  };
  perf.opened = performance.now();
  // As a mouse would: Lumino's tab bar selects on pointerdown.
  const tab = document.querySelector('.jp-SideBar [data-id="tf-vgpu-panel"]');
  const r = tab.getBoundingClientRect();
  const at = { bubbles: true, cancelable: true, button: 0, clientX: r.x + r.width / 2, clientY: r.y + r.height / 2 };
  tab.dispatchEvent(new PointerEvent('pointerdown', at));
  tab.dispatchEvent(new PointerEvent('pointerup', at));
  tab.dispatchEvent(new MouseEvent('click', at));
  requestAnimationFrame(poll);
})"""

# Frame times (ms between animation frames) and renders over `ms` milliseconds.
FRAMES_JS = """ms => new Promise(resolve => {
  const frames = [];
  const start = performance.now();
  const marks0 = window.__tfPerf.marks.length;
  let last = start;
  const step = now => {
    frames.push(now - last);
    last = now;
    if (now - start < ms) requestAnimationFrame(step);
    else resolve({ frames, renders: window.__tfPerf.marks.length - marks0,
                   longtasks: window.__tfPerf.longtasks.filter(([t]) => t >= start) });
  };
  requestAnimationFrame(step);
})"""


def api_leases(server: JupyterServerProcess) -> int:
    return sum(int(w["leases"]) for w in server.get_sync("/tf-vgpu/api/pool")["workers"])


async def fill_with_leases(workers: list[WorkerProcess], count: int) -> tuple[int, list[str]]:
    """Allocate up to `count` 64 MiB / 1 % leases over the workers, alternating principals; the
    number allocated and why each worker took no more."""
    done = 0
    full: list[str] = []
    for worker in workers:
        clients = [worker.client(worker.token), worker.client(worker.other_token)]
        try:
            while done < count:
                client = clients[done % 2]
                try:
                    await client.allocate(64 * MiB, 1, ttl_seconds=3600,
                                          labels={"notebook": f"scale/notebook-{done:03}.ipynb"})
                except Exception as exc:  # this worker is full: the next one
                    if "RESOURCE_EXHAUSTED" not in str(exc):
                        raise
                    full.append(f"{worker.address} after {done}: {exc}")
                    break
                done += 1
        finally:
            for c in clients:
                await c.close()
    return done, full


async def describe_leases(workers: list[WorkerProcess]) -> str:
    """Each worker's leases as its admin sees them: how many are the test's own fill, and every other
    one in full (the kernels' leases, and any that should not be there)."""
    out = []
    for worker in workers:
        async with worker.client(worker.token) as client:  # alice: the workers' admin
            leases = await client.list_leases(all_principals=True)
        fill = [x for x in leases if x.labels.get("notebook", "").startswith("scale/notebook-")]
        out.append(f"{worker.address}: {len(leases)} leases, {len(fill)} of them the test's fill; the others:")
        out += [f"  {x.id} {x.principal} compute {sum(s.compute for s in x.slices)} profile {x.profile!r} "
                f"labels {dict(x.labels)} created {x.created_at:.2f}" for x in leases if x not in fill]
    return "\n".join(out)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def test_panel_with_200_kernels_and_leases(tmp_path: Any) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--host-vram", "64Gi", "--watchdog-action", "warn", "--admin-principals", "alice"]
    workers = [WorkerProcess(args) for _ in range(2)]
    # One server token for both workers (it reads the first one's token file).
    workers[1].token, workers[1].other_token = workers[0].token, workers[0].other_token
    workers[1].token_file.write_text(workers[0].token_file.read_text())
    for w in workers:
        w.start()
    server = JupyterServerProcess(workers=workers, app="jupyterlab")
    try:
        quiet_lab(server)
        ProfileStore(server.root / "data" / "kernels").add(Profile("scale", 64 * MiB, 1))
        server.start()
        kernel_ids = set()
        for _ in range(KERNELS):
            status, body = server._open("POST", "/api/kernels", {"name": "vgpu-scale"})
            assert status == 201, (status, body, server.log()[-2000:])
            kernel_ids.add(str(body["id"]))
        leased, full = asyncio.run(fill_with_leases(workers, TOTAL - KERNELS))
        if leased != TOTAL - KERNELS:  # seen once in CI (193 of 194): say who holds the room
            pytest.fail(f"only {leased} leases fit: {full}\n{asyncio.run(describe_leases(workers))}\n"
                        f"server log:\n{server.log()[-3000:]}")
        wait_for(lambda: api_leases(server) == TOTAL, 30,
                 f"the pool counts every lease: {server.get_sync('/tf-vgpu/api/pool')['workers']}")

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            try:
                log = BrowserLog(page)
                page.add_init_script(PERF_JS % {"kernels": KERNELS, "leases": TOTAL})
                page.goto(f"{server.url}/lab/workspaces/scale?token={server.token}")
                page.locator('.jp-SideBar [data-id="tf-vgpu-panel"]').wait_for()
                wait_for(lambda: page.evaluate("window.__tfPerf.complete") is not None, 60,
                         "the panel lists every kernel and lease", page)
                open_ms = page.evaluate(OPEN_JS, 30_000)
                panel = page.locator("#tf-vgpu-panel")
                shown = {str(e.get_attribute("data-kernel-id"))
                         for e in panel.locator('[data-testid="tf-vgpu-kernel"]').all()}
                assert shown == kernel_ids
                count = panel.locator('[data-testid="tf-vgpu-lease-count"]')
                assert int(count.get_attribute("data-count") or -1) == api_leases(server) == TOTAL
                stream = page.evaluate(FRAMES_JS, STREAM_S * 1000)
                assert stream["renders"] > 0, "no render while samples streamed"
                perf = page.evaluate("window.__tfPerf")
                page.screenshot(path=str(tmp_path / "scale.png"))
                assert log.ours() == []
            finally:
                browser.close()
        frames = stream["frames"][1:]
        long_ms = [d for _, d in stream["longtasks"]]
        figures = {
            "kernels": KERNELS, "leases": TOTAL,
            # From the page's start (navigation) to the panel holding every kernel and lease.
            "page_start_to_all_listed_ms": round(perf["complete"], 1),
            # Renders (marked after they are painted) before the one that listed them all: 0 = the first.
            "renders_before_all_listed": sum(1 for t in perf["marks"] if t < perf["complete"]),
            # Opening its tab: until visible with every chart's canvas drawn.
            "open_to_charts_drawn_ms": round(open_ms, 1),
            "stream_s": STREAM_S, "renders_while_streaming": stream["renders"],
            "frame_ms_p50": round(statistics.median(frames), 2), "frame_ms_p95": round(percentile(frames, 95), 2),
            "frame_ms_max": round(max(frames), 2), "frames": len(frames),
            "long_tasks_while_streaming": len(long_ms), "long_task_ms_max": round(max(long_ms, default=0.0), 1),
            "long_task_ms_total": round(sum(long_ms), 1),
        }
        print("\npanel scale figures:", json.dumps(figures))
        if os.environ.get("TF_PANEL_SCALE_OUT"):
            with open(os.environ["TF_PANEL_SCALE_OUT"], "w", encoding="utf-8") as out:
                json.dump(figures, out)
    finally:
        server.cleanup()
        for w in workers:
            w.cleanup()
