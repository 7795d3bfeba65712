"""The dashboard in a real browser: JupyterLab (and Notebook 7) on localhost, Debian's
chromium driven by Playwright.

Runs ``notebooks/03-dashboard.ipynb`` (a copy, outputs cleared) cell by cell and checks what
the *rendered output area* shows — never the cell source: the TownView lists the agents,
updates in place when a task completes, its timeline picture is drawn and drawn again, a
click on a task's row opens its log, a header click sorts, its buttons work; at 1,000 px
nothing scrolls sideways and every header sits over its cells (bounding boxes compared);
text keeps a 4.5:1 contrast in the light and the dark theme; Notebook 7 renders it too.
The view's screenshot goes to the test's tmp dir, and to ``docs/dashboard.png`` (the
README's picture) when that is missing or ``TINYTOWN_UPDATE_SCREENSHOT=1``.

Playwright's own browser download is never used: the test drives the system chromium
(``TINYTOWN_CHROMIUM`` or ``/usr/bin/chromium``; ``.ci/run`` installs Debian's package when it
is missing) and is skipped, saying why, only when there is none.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "03-dashboard.ipynb"
SCREENSHOT = REPO / "docs" / "dashboard.png"
CHROMIUM = os.environ.get("TINYTOWN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"

pytestmark = [
    pytest.mark.skipif(not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
                       reason=f"no chromium at {CHROMIUM} (apt-get install chromium, or set "
                              "TINYTOWN_CHROMIUM); Playwright's browser download is not used"),
    pytest.mark.timeout(240),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of notebook 03 (outputs cleared), with throwaway settings."""
    root = Path(tempfile.mkdtemp(prefix="ttnb-lab-"))  # short: its path shows in the view
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, root / NOTEBOOK.name)
    settings = tmp_path / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.token={token}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--allow-root",
         "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True",
         "--JupyterNotebookApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield {"url": f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", "root": root,
               "notebook7_url": f"{base}/notebooks/{NOTEBOOK.name}?token={token}"}
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        _stop_towns(root / "towns")
        shutil.rmtree(root, ignore_errors=True)


def _stop_towns(towns: Path) -> None:
    """Shut down a town the notebook left running (only when it failed midway): its worker
    processes, then its server."""
    from tinytown_nb.core import Town
    from tinytown_nb.core.server import ManagedServer

    for tt in towns.glob("*/.tt"):
        if ManagedServer(tt).is_running():
            Town.connect(tt.parent).shutdown()


# --------------------------------------------------------------------------- page helpers

_JS_READY = """async () => {
  const panel = window.jupyterapp.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
}"""

_JS_CELLS = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  return nb.model.sharedModel.cells.map(c => c.cell_type === 'code' ? c.getSource() : '');
}"""

_JS_RUN = """async (i) => {
  const app = window.jupyterapp, nb = app.shell.currentWidget.content;
  nb.activeCellIndex = i;
  nb.mode = 'command';
  await app.commands.execute('notebook:run-cell');
}"""

_JS_ERRORS = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content, errors = [];
  for (const cell of nb.model.sharedModel.cells) {
    for (const out of (cell.outputs || [])) {
      if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
    }
  }
  return errors;
}"""


class Notebook:
    """The notebook open in the page: find cells by a source marker, run them one by one."""

    def __init__(self, page):
        self.page = page
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext",
                               timeout=60_000)
        page.evaluate(_JS_READY)
        page.wait_for_selector(IDLE, timeout=60_000)
        self.sources: list[str] = page.evaluate(_JS_CELLS)
        self.next = 0

    def index(self, marker: str) -> int:
        """The first code cell whose source contains ``marker``."""
        hits = [i for i, s in enumerate(self.sources) if marker in s]
        assert hits, f"no cell of {NOTEBOOK.name} contains {marker!r}: {self.sources!r}"
        return hits[0]

    def run_through(self, marker: str | None = None):
        """Run the cells not run yet, up to and including the first code cell containing
        ``marker`` (all of them without one), each once the kernel is idle; return the last
        one's rendered output area."""
        last = self.index(marker) if marker else len(self.sources) - 1
        for i in range(self.next, last + 1):
            self.page.wait_for_selector(IDLE, timeout=60_000)
            self.page.evaluate(_JS_RUN, i)
        self.page.wait_for_selector(IDLE, timeout=60_000)
        self.next = last + 1
        return self.page.locator(".jp-Notebook .jp-Cell").nth(last).locator(".jp-OutputArea-output")

    def errors(self) -> list[str]:
        return self.page.evaluate(_JS_ERRORS)


# --------------------------------------------------------------------------- checks on the page

_JS_NO_SIDEWAYS_SCROLL = """() => {
  const out = [];
  for (const el of document.querySelectorAll('.ttnb-view, .jp-WindowedPanel-outer, .jp-NotebookPanel-notebook, .jp-OutputArea-output')) {
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'hidden')
      out.push(el.className + ' ' + el.scrollWidth + '>' + el.clientWidth);
  }
  const view = document.querySelector('.ttnb-view');
  if (view.scrollWidth > view.clientWidth + 1) out.push('view ' + view.scrollWidth + '>' + view.clientWidth);
  return out;
}"""

_JS_ALIGNMENT = """() => {
  // every grid: each header's left edge and width against its column's first cell
  const bad = [];
  for (const grid of document.querySelectorAll('.ttnb-grid')) {
    const heads = [...grid.querySelectorAll('.ttnb-head')];
    const cells = [...grid.querySelectorAll('.ttnb-cell:not(.ttnb-hide)')].slice(0, heads.length);
    if (cells.length < heads.length) continue;
    heads.forEach((h, i) => {
      const a = h.getBoundingClientRect(), b = cells[i].getBoundingClientRect();
      if (Math.abs(a.left - b.left) > 1 || Math.abs(a.width - b.width) > 1)
        bad.push(h.textContent + ': header ' + a.left + '+' + a.width + ' cell ' + b.left + '+' + b.width);
    });
  }
  return bad;
}"""

_JS_CONTRAST = """() => {
  // WCAG contrast of text against the first opaque background behind it
  const rgb = s => s.match(/[0-9.]+/g).map(Number);
  const lum = c => { const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const bg = el => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor); if (c.length < 4 || c[3] > 0.5) return c; } return [255, 255, 255]; };
  const ratio = el => { const a = lum(rgb(getComputedStyle(el).color)), b = lum(bg(el)); return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); };
  const picks = {cell: '.ttnb-grid .ttnb-cell:not(.ttnb-hide)', head: '.ttnb-grid .ttnb-head',
                 zero: '.ttnb-badge.ttnb-zero', badge: '.ttnb-badge:not(.ttnb-zero)'};
  const out = {};
  for (const [k, sel] of Object.entries(picks)) { const el = document.querySelector('.ttnb-view ' + sel); out[k] = el ? ratio(el) : null; }
  out.background = bg(document.querySelector('.ttnb-view'));
  return out;
}"""


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# --------------------------------------------------------------------------- the tests


def test_dashboard_live_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1000})
            page.goto(lab["url"])
            nb = Notebook(page)
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

            # The view shows the agents the notebook spawned, in the rendered widget.
            view = nb.run_through("%tt_view")
            expect(view.locator(".widget-html-content", has_text="Town dashboard")).to_be_visible(timeout=20_000)
            agents = view.locator(".ttnb-grid").first
            for name in ("writer", "critic", "counter"):
                expect(agents).to_contain_text(name, timeout=20_000)
            expect(view.locator(".ttnb-badge", has_text="completed 0")).to_be_visible()
            timeline = view.locator("img").first
            expect(timeline).to_be_visible(timeout=20_000)
            first_picture = timeline.get_attribute("src")

            # A task completes: the same output area updates in place, with no re-display.
            nb.run_through("%%tt_assign writer --wait")
            expect(view.locator(".ttnb-badge", has_text="completed 1")).to_be_visible(timeout=20_000)
            expect(view).to_contain_text("WRITE A HAIKU", timeout=20_000)
            # ... and the timeline is drawn again with the task's bar
            page.wait_for_function("([img, before]) => img.src !== before",
                                   arg=[timeline.element_handle(), first_picture], timeout=20_000)
            assert page.evaluate("(img) => img.naturalWidth", timeline.element_handle()) > 300

            # More work: the counts follow while the notebook waits for the town.
            nb.run_through("%tt_watch")
            expect(view.locator(".ttnb-badge", has_text="completed 4")).to_be_visible(timeout=20_000)
            expect(view.locator(".ttnb-badge", has_text="failed 3")).to_be_visible(timeout=20_000)

            # Idle agents show no current task (an emptied cell is emptied on the page too).
            expect(agents).not_to_contain_text("write a haiku about redis", timeout=20_000)

            # The layout at 1,000 px: nothing scrolls sideways, headers sit over their cells.
            assert page.evaluate(_JS_NO_SIDEWAYS_SCROLL) == []
            assert page.evaluate(_JS_ALIGNMENT) == []

            # A click on a task's row opens its result and log, with Retry and Cancel.
            view.locator(".ttnb-grid").nth(1).get_by_role("button", name="write a haiku about redis",
                                                          exact=True).click()
            panel = view.locator(".ttnb-panel")
            expect(panel).to_be_visible(timeout=20_000)
            expect(panel).to_contain_text("drafting: write a haiku about redis")
            expect(panel.get_by_role("button", name="retry")).to_be_disabled()
            panel.get_by_role("button", name="close task").click()
            expect(panel).to_be_hidden(timeout=20_000)

            # A header click sorts: the tasks by their text, A to Z.
            tasks = view.locator(".ttnb-grid").nth(1)
            tasks.locator(".ttnb-head", has_text="task").click()
            expect(tasks.locator(".ttnb-head", has_text="task ▲")).to_be_visible(timeout=20_000)
            page.wait_for_function("""(grid) => {
                const cells = [...grid.querySelectorAll('.ttnb-cell:not(.ttnb-hide)')];
                const n = grid.querySelectorAll('.ttnb-head').length;
                const column = cells.filter((_, i) => i % n === 3).map(c => c.textContent.trim());
                return column.length > 3 && column.every((v, i) => i === 0 || column[i - 1] <= v);
            }""", arg=tasks.element_handle(), timeout=20_000)

            # The controls work from the browser: pick an agent and interrupt it.
            view.get_by_text("Controls", exact=True).click()
            view.locator("select").last.select_option("counter")
            view.get_by_role("button", name="interrupt").click()
            expect(view).to_contain_text("counter is now paused", timeout=20_000)
            expect(view.locator(".ttnb-badge", has_text="paused 1")).to_be_visible(timeout=20_000)
            view.get_by_role("button", name="resume").click()
            expect(view.locator(".ttnb-badge", has_text="paused 0")).to_be_visible(timeout=20_000)

            # A change made outside the kernel, while no cell runs, shows up too.
            from tinytown_nb.core import Town

            outside = Town.connect(lab["root"] / "towns" / "03")
            outside.wait(task=outside.assign("counter", "assigned from outside"), timeout=30)
            outside.disconnect()
            expect(view.locator(".ttnb-badge", has_text="completed 5")).to_be_visible(timeout=20_000)
            expect(view).to_contain_text("assigned from outside")

            # Legible in both themes: text against its background, zero badges included.
            light = page.evaluate(_JS_CONTRAST)
            assert min(light["cell"], light["head"], light["zero"], light["badge"]) >= 4.5, light
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                          "{theme: 'JupyterLab Dark'})")
            page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=20_000)
            time.sleep(0.5)
            dark = page.evaluate(_JS_CONTRAST)
            assert sum(dark["background"][:3]) < 200, dark  # the view follows the theme
            assert min(dark["cell"], dark["head"], dark["zero"], dark["badge"]) >= 4.5, dark
            page.screenshot(path=str(tmp_path / "dark.png"))
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                          "{theme: 'JupyterLab Light'})")
            page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'", timeout=20_000)

            # The picture for the README: the whole view, in a window tall enough to hold it.
            page.set_viewport_size({"width": 1100, "height": 2600})
            time.sleep(0.5)
            view.first.scroll_into_view_if_needed()
            shot = tmp_path / SCREENSHOT.name
            view.first.screenshot(path=str(shot))
            if os.environ.get("TINYTOWN_UPDATE_SCREENSHOT") or not SCREENSHOT.exists():
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copy(shot, SCREENSHOT)

            nb.run_through()
            assert nb.errors() == []
            assert not (lab["root"] / "towns" / "03" / ".tt" / "redis.sock").exists(), \
                "the notebook should shut its town's server down at the end"
            # the view noticed and saved its last state into the notebook
            expect(view.locator(".widget-html-content", has_text="Town dashboard")).to_be_visible()
        finally:
            browser.close()


def test_dashboard_renders_in_notebook_7(lab):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1000})
            page.goto(lab["notebook7_url"])
            nb = Notebook(page)
            view = nb.run_through("%tt_view")
            expect(view.locator(".widget-html-content", has_text="Town dashboard")).to_be_visible(timeout=30_000)
            for name in ("writer", "critic", "counter"):
                expect(view.locator(".ttnb-grid").first).to_contain_text(name, timeout=20_000)
            expect(view.locator("img").first).to_be_visible(timeout=20_000)
            assert page.evaluate(_JS_NO_SIDEWAYS_SCROLL) == []
            assert page.evaluate(_JS_ALIGNMENT) == []
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                          ".requestExecute({code: 'view.close(); town.shutdown()'}).done")
        finally:
            browser.close()
