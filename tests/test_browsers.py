"""The browsers in a real browser (marker `browser`). JupyterLab runs `tests/browser_fixtures/browsers.ipynb`, which
builds every browser small (neuron, attention, CKA, by-layer, pseudo-positive, saliency, query explorer,
correspondence, direction explorer), and chromium, driven by Playwright, works each browser's controls as a user would:
picks from a dropdown, types into a text box, moves a slider with the arrow keys, clicks a toggle, a checkbox, a button
or a tab. Each action must change the rendered image (its `src`, to a picture that loads); the images shown are at their
natural size (those in a hidden tab are not shown), no control's label is cut off, and at the end neither the page's
console, nor the kernel (every `error` message on its iopub channel, its stderr), nor the server's log, nor any cell or
widget output holds an error. JupyterLab runs in a temporary folder with its own settings (`windowingMode: "none"`, so
every cell is in the page; news and update checks off), token off, `--ServerApp.allow_root` when root, and is shut down
also when a test fails.

Needs chromium (Debian's: `apt-get install chromium`; `WORKBENCH_CHROMIUM` names another binary) and playwright
(`pip install playwright`; its own browser download is not used). Without them these tests skip with the reason,
unless `WORKBENCH_REQUIRE_BROWSER=1` (CI sets it), where they fail. `WORKBENCH_BROWSER_SCREENSHOTS=DIR` saves a
screenshot of each browser after its controls were worked.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

FIXTURE = Path(__file__).resolve().parent / "browser_fixtures" / "browsers.ipynb"
CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BROWSERS = ("neuron", "attention", "cka", "by_layer", "ppm", "saliency", "query", "correspondence", "direction")
WAIT_MS = 60_000          # one render on a loaded 2-core machine takes well under this


def missing_requirement() -> str | None:
    "Why the browser tests cannot run here, or None."
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright, or pip install -e '.[dev]')"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or point WORKBENCH_CHROMIUM at one)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r: return json.loads(r.read())


class Lab:
    "A JupyterLab server in a temporary folder: token off, its own settings, workspaces, config and runtime folders."

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime = root / ".runtime"
        settings = root / ".settings"
        for p, v in {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
                     "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                           "checkForUpdates": False}}.items():
            (settings / p).parent.mkdir(parents=True, exist_ok=True)
            (settings / p).write_text(json.dumps(v))
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(self.runtime), JUPYTER_CONFIG_DIR=str(root / ".config"),
                   JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"),
                   WORKBENCH_PROGRESS="off", MPLBACKEND="module://matplotlib_inline.backend_inline", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}", "--ServerApp.port_retries=0",
               "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
               f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={root / '.workspaces'}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0: cmd.append("--ServerApp.allow_root=True")
        self.log_path = root / "jupyterlab.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                get_json(f"{self.url}/api/status"); return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log()}")

    def sessions(self) -> list[dict]: return get_json(f"{self.url}/api/sessions")

    def log(self) -> str: return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait(10)
        self._log.close()


class IOPub(threading.Thread):
    "Listens on a kernel's iopub channel and keeps every error message and stderr stream (what the kernel logged)."

    def __init__(self, connection_file: Path):
        super().__init__(daemon=True)
        from jupyter_client import BlockingKernelClient
        self.client = BlockingKernelClient(connection_file=str(connection_file))
        self.client.load_connection_file()
        self.client.start_channels(shell=False, iopub=True, stdin=False, hb=False, control=False)
        self.errors, self.stderr, self.running = [], [], True

    def run(self):
        while self.running:
            try: msg = self.client.get_iopub_msg(timeout=0.2)
            except Exception: continue
            c = msg.get("content", {})
            if msg["msg_type"] == "error":
                self.errors.append(f"{c.get('ename')}: {c.get('evalue')}\n" + re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(c.get("traceback", []))))
            elif msg["msg_type"] == "stream" and c.get("name") == "stderr": self.stderr.append(c.get("text", ""))

    def stop(self):
        self.running = False
        self.join(5)
        self.client.stop_channels()


class Page:
    "The notebook open in chromium, with what its console reported."

    def __init__(self, page, lab: Lab, shots: Path | None):
        self.page, self.lab, self.shots = page, lab, shots
        self.console = []
        page.on("console", lambda m: self.console.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))

    def q(self, browser: str, attr: str | None = None, inner: str = "") -> str:
        "The CSS selector of a browser's root, or of one of its widgets (and something inside it)."
        return f".wb-{browser}" + (f"-{attr}" if attr else "") + (f" {inner}" if inner else "")

    def src(self, selector: str) -> str | None: return self.page.locator(selector).first.get_attribute("src")

    def wait_loaded(self, selector: str, old: str | None = None):
        "Wait until the <img> at `selector` shows a picture that loaded (and, given `old`, another `src` than it)."
        self.page.wait_for_function("""([sel, old]) => { const e = document.querySelector(sel);
            return e && e.src && e.src !== old && e.complete && e.naturalWidth > 0; }""", arg=[selector, old], timeout=WAIT_MS)

    def changes(self, browser: str, action, what: str, image: str = "image", from_empty: bool = False):
        "Do `action()` and check that the browser's image (empty before, if `from_empty`) shows a new picture."
        sel = self.q(browser, image)
        if not from_empty: self.wait_loaded(sel)
        before = self.src(sel)
        action()
        try: self.wait_loaded(sel, before)
        except Exception as e:
            shot = self.screenshot(browser, "failed-")
            raise AssertionError(f"{browser}: {what} did not change the rendered image (screenshot: {shot})") from e

    def wait_true(self, browser: str, js: str, arg, what: str):
        "Wait until the function `js` of `arg` is true in the page; on a timeout, fail naming `what`, with a screenshot."
        try: self.page.wait_for_function(js, arg=arg, timeout=WAIT_MS)
        except Exception as e:
            shot = self.screenshot(browser, "failed-")
            raise AssertionError(f"{browser}: waited in vain for {what} (screenshot: {shot})") from e

    def wait_text(self, browser: str, attr: str, text: str):
        "Wait until a widget of the browser shows `text` (its text arrives apart from the image)."
        self.wait_true(browser, "([sel, t]) => document.querySelector(sel).innerText.includes(t)", [self.q(browser, attr), text],
                       f"{attr} to say {text!r}")

    # the controls ----------------------------------------------------------------------------------------------------
    def choose(self, browser, attr, label=None):
        "Pick `label` in a Dropdown (a <select>); None: the first option other than the one chosen."
        select = self.page.locator(self.q(browser, attr, "select"))
        if label is None:
            label = select.evaluate("s => Array.from(s.options).find(o => o.index !== s.selectedIndex).label")
        select.select_option(label=label)

    def pick(self, browser, attr, labels):
        "Pick options of a Select / SelectMultiple list."
        self.page.locator(self.q(browser, attr, "select")).select_option(label=labels)

    def type(self, browser, attr, text):
        "Type `text` into a Text or IntText box and press Enter."
        box = self.page.locator(self.q(browser, attr, "input"))
        box.click()
        box.fill("")
        box.type(text)
        box.press("Enter")

    def keys(self, browser, attr, *keys):
        "Focus a slider's handle and press keys (ArrowRight, ArrowLeft, Home, End)."
        handle = self.page.locator(self.q(browser, attr, ".noUi-handle"))
        handle.focus()
        for k in keys: handle.press(k)

    def toggle(self, browser, attr, label):
        "Click the button `label` of a ToggleButtons."
        self.page.locator(self.q(browser, attr, "button"), has_text=label).first.click()

    def check(self, browser, attr):
        "Click a Checkbox."
        self.page.locator(self.q(browser, attr, "input[type=checkbox]")).click()

    def click(self, browser, attr):
        "Click a Button."
        self.page.locator(self.q(browser, attr)).click()

    def tab(self, browser, attr, title):
        "Click the tab `title` of a Tab widget."
        self.page.locator(self.q(browser, attr, ".lm-TabBar-tab"), has_text=title).first.click()

    def text(self, browser, attr) -> str: return self.page.locator(self.q(browser, attr)).inner_text()

    # what the page shows ---------------------------------------------------------------------------------------------
    def layout_defects(self, browser: str) -> list[str]:
        "Images shown not at their natural size and labels cut off, in one browser (an image in a hidden tab is not shown)."
        return self.page.evaluate("""(root) => {
            const out = [], r = document.querySelector(root);
            for (const img of r.querySelectorAll('img')) {
                if (!img.naturalWidth || !img.checkVisibility()) continue;
                const b = img.getBoundingClientRect();
                if (Math.abs(b.width - img.naturalWidth) > 1 || Math.abs(b.height - img.naturalHeight) > 1)
                    out.push(`image ${img.className.split(' ').filter(c => c.startsWith('wb-')).join(' ')} drawn at `
                             + `${Math.round(b.width)}×${Math.round(b.height)} px, its natural size is ${img.naturalWidth}×${img.naturalHeight}`);
            }
            for (const l of r.querySelectorAll('.widget-label, .widget-label-basic')) {
                if (l.clientWidth > 0 && l.scrollWidth > l.clientWidth + 1)
                    out.push(`label '${l.textContent}' cut off (${l.scrollWidth} px of text in ${l.clientWidth} px)`);
            }
            return out; }""", self.q(browser))

    def box(self, selector: str) -> dict: return self.page.locator(selector).first.bounding_box()

    def tracebacks(self) -> list[str]:
        "The text of every cell or widget output that holds a traceback."
        return self.page.evaluate("""() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
            .map(e => e.innerText).filter(t => /Traceback|Error:/.test(t))""")

    def screenshot(self, browser: str, prefix: str = "") -> Path:
        "Save a screenshot of the browser (into WORKBENCH_BROWSER_SCREENSHOTS, else beside the server's log) and return its path."
        path = (self.shots or self.lab.root) / f"{prefix}{browser}.png"
        self.page.locator(self.q(browser)).screenshot(path=str(path))
        return path

    def finish(self, browser: str):
        "After a browser's controls were worked: its screenshot, then no image off its natural size and no label cut off."
        if self.shots: self.screenshot(browser)
        defects = self.layout_defects(browser)
        assert not defects, f"{browser}: " + "; ".join(defects)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    why = missing_requirement()
    if why:
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"WORKBENCH_REQUIRE_BROWSER=1 but the browser tests cannot run: {why}")
        pytest.skip(why)
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(FIXTURE, root / FIXTURE.name)
    lab = Lab(root)
    try:
        lab.wait_ready()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def nb(lab):
    "The fixture notebook open in chromium, run all, the kernel idle; on exit the checks that nothing logged an error."
    from playwright.sync_api import sync_playwright
    shots = Path(os.environ["WORKBENCH_BROWSER_SCREENSHOTS"]) if os.environ.get("WORKBENCH_BROWSER_SCREENSHOTS") else None
    if shots: shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        iopub = None
        try:
            page = chromium.new_page(viewport={"width": 1600, "height": 1400})
            page.set_default_timeout(WAIT_MS)
            nb = Page(page, lab, shots)
            page.goto(f"{lab.url}/lab/tree/{FIXTURE.name}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            kernel = wait_for_kernel(page, lab)
            iopub = IOPub(lab.runtime / f"kernel-{kernel}.json")
            iopub.start()
            page.locator(".jp-Notebook").first.click()
            run_all(page)
            wait_idle(nb, kernel)
            for b in BROWSERS: nb.wait_loaded(nb.q(b, "image"))
            yield nb
            assert not nb.console, "the page logged errors:\n" + "\n".join(nb.console)
            assert not iopub.errors, "the kernel reported errors:\n" + "\n\n".join(iopub.errors)
            assert not nb.tracebacks(), "an output holds a traceback:\n" + "\n\n".join(nb.tracebacks())
            bad = [t for t in iopub.stderr if re.search(r"Traceback|Error|Exception", t)]
            assert not bad, "the kernel wrote errors to stderr:\n" + "\n".join(bad)
            bad = [l for l in lab.log_path.read_text(errors="replace").splitlines() if l.startswith("[E ") or "Traceback" in l]
            assert not bad, "the server logged errors:\n" + "\n".join(bad)
        finally:
            if iopub is not None: iopub.stop()
            chromium.close()


def wait_for_kernel(page, lab: Lab, timeout: float = 120) -> str:
    "Dismiss JupyterLab's kernel dialog if it asks, and return the id of the notebook's kernel once it is running."
    t0 = time.time()
    while time.time() - t0 < timeout:
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count(): dialog.first.click()
        ss = [s for s in lab.sessions() if s.get("path", "").endswith(FIXTURE.name) and s.get("kernel")]
        if ss and ss[0]["kernel"].get("execution_state") in ("idle", "busy") and (lab.runtime / f"kernel-{ss[0]['kernel']['id']}.json").exists():
            return ss[0]["kernel"]["id"]
        time.sleep(0.5)
    raise TimeoutError(f"no kernel for {FIXTURE.name} after {timeout:.0f} s:\n{lab.log()}")


def run_all(page):
    "Run > Run All Cells, from JupyterLab's menu."
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def wait_idle(nb: Page, kernel: str, timeout: float = 240):
    "Wait until every code cell has run (no [*] prompt, every prompt numbered) and `/api/sessions` reports the kernel idle."
    t0 = time.time()
    while time.time() - t0 < timeout:
        prompts = nb.page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        done = prompts and all(t.strip() not in ("", "[ ]:", "[*]:") for t in prompts)
        state = next((s["kernel"]["execution_state"] for s in nb.lab.sessions() if s["kernel"]["id"] == kernel), None)
        if done and state == "idle": return
        if state == "idle" and nb.tracebacks():          # Run All stops at a failing cell
            raise AssertionError("a cell of the fixture notebook failed:\n" + "\n\n".join(nb.tracebacks()))
        time.sleep(0.5)
    raise TimeoutError(f"the notebook did not finish within {timeout:.0f} s; prompts {prompts}, kernel {state}")


def test_neuron_browser(nb):
    b = "neuron"
    nb.changes(b, lambda: nb.choose(b, "layer"), "the layer dropdown")
    nb.changes(b, lambda: nb.type(b, "unit", "3"), "typing a unit")
    ranked = nb.text(b, "ranking")
    nb.type(b, "prompt", "a parked airplane")               # a new prompt is scored on the fly and ranks the units anew
    nb.wait_true(b, "([sel, old]) => document.querySelector(sel).innerText !== old", [nb.q(b, "ranking"), ranked],
                 "a new prompt to re-rank the units")
    nb.click(b, "rank_button")
    first = nb.page.locator(nb.q(b, "ranking", "option")).first.inner_text()
    nb.changes(b, lambda: nb.pick(b, "ranking", first), "picking a ranked unit")
    nb.changes(b, lambda: nb.toggle(b, "view", "pseudo-labels"), "the pseudo-labels toggle")
    nb.changes(b, lambda: nb.keys(b, "sample", "ArrowRight"), "the first-image slider")
    nb.changes(b, lambda: nb.choose(b, "variant", "smoothing"), "the variant dropdown")
    nb.changes(b, lambda: nb.toggle(b, "view", "unit"), "the unit toggle")
    if nb.shots: nb.screenshot(b, "unit-")
    # ten prompts' similarities must not push the images down: below the ranking list comes one row of controls, then the images
    ranking, image = nb.box(nb.q(b, "ranking")), nb.box(nb.q(b, "image"))
    gap = image["y"] - (ranking["y"] + ranking["height"])
    assert gap < 100, f"the images start {gap:.0f} px below the ranking list (the info panel pushes them down)"
    nb.finish(b)


def test_attention_browser(nb):
    b = "attention"
    nb.changes(b, lambda: nb.keys(b, "layer", "ArrowRight"), "the layer slider")
    nb.changes(b, lambda: nb.choose(b, "head", "1"), "the head dropdown")
    nb.changes(b, lambda: nb.toggle(b, "source", "image"), "the image toggle")
    nb.changes(b, lambda: nb.keys(b, "index", "ArrowRight", "ArrowRight"), "the image slider")
    nb.changes(b, lambda: nb.toggle(b, "query", "token"), "the token toggle")
    nb.changes(b, lambda: nb.keys(b, "row", "ArrowRight"), "the row slider")
    nb.changes(b, lambda: nb.choose(b, "model", "B"), "the model dropdown")
    nb.changes(b, lambda: nb.toggle(b, "view", "AAAM"), "the AAAM toggle")
    nb.finish(b)
    nb.changes(b, lambda: nb.toggle(b, "view", "distance per head"), "the distance toggle")
    nb.finish(b)


def test_cka_browser(nb):
    b = "cka"
    nb.changes(b, lambda: nb.choose(b, "pick", "models"), "the result dropdown")
    nb.wait_text(b, "info", "3 × 3")
    nb.changes(b, lambda: nb.toggle(b, "layout", "all"), "the all toggle")
    nb.finish(b)


def test_by_layer_panel(nb):
    b = "by_layer"
    nb.finish(b)
    nb.changes(b, lambda: nb.choose(b, "metric", "IoU"), "the metric dropdown")
    nb.changes(b, lambda: nb.pick(b, "models", ["A"]), "the model selection")
    nb.finish(b)


def test_ppm_browser(nb):
    b = "ppm"
    nb.changes(b, lambda: nb.keys(b, "iteration", "ArrowLeft"), "the iteration slider")
    nb.changes(b, lambda: nb.choose(b, "image_id", "image 2"), "the image dropdown")
    nb.changes(b, lambda: nb.keys(b, "threshold", "Home"), "the objectness slider")
    nb.wait_text(b, "info", "objectness > 0.05")
    if nb.shots: nb.screenshot(b, "low-threshold-")
    nb.changes(b, lambda: nb.check(b, "show_labels"), "the labels checkbox")
    nb.changes(b, lambda: nb.type(b, "max_boxes", "5"), "typing the number of boxes drawn")
    nb.wait_text(b, "info", "drawn: the 5 highest")
    nb.changes(b, lambda: nb.keys(b, "threshold", "End"), "the objectness slider (to 1)")
    nb.check(b, "show_curve")
    nb.wait_true(b, "sel => { const e = document.querySelector(sel); return e.complete && !e.naturalWidth; }", nb.q(b, "curve"),
                 "the running curve to go when its checkbox is cleared")
    nb.changes(b, lambda: nb.check(b, "show_curve"), "the running-curve checkbox", image="curve", from_empty=True)
    nb.finish(b)


def test_saliency_browser(nb):
    b = "saliency"
    nb.changes(b, lambda: nb.choose(b, "method", "noise"), "the method dropdown")
    nb.changes(b, lambda: nb.keys(b, "k", "ArrowRight"), "the map slider")
    nb.changes(b, lambda: nb.keys(b, "index", "ArrowRight"), "the image slider")
    nb.changes(b, lambda: nb.toggle(b, "rule", "mass"), "the mass toggle")
    nb.changes(b, lambda: nb.keys(b, "value", "ArrowRight", "ArrowRight"), "the value slider")
    nb.changes(b, lambda: nb.check(b, "largest"), "the largest-box checkbox")
    nb.changes(b, lambda: nb.pick(b, "compare", ["oracle", "noise"]), "the side-by-side selection")
    nb.finish(b)


def test_query_explorer(nb):
    b = "query"
    nb.changes(b, lambda: nb.type(b, "queries", "tree, car, house"), "typing the queries")
    nb.wait_text(b, "info", "house")
    nb.changes(b, lambda: nb.keys(b, "threshold", "ArrowLeft", "ArrowLeft"), "the threshold slider")
    nb.changes(b, lambda: nb.check(b, "largest"), "the largest-box checkbox")
    nb.changes(b, lambda: nb.choose(b, "weighting", "increase"), "the weighting dropdown")
    nb.changes(b, lambda: nb.keys(b, "index", "ArrowRight"), "the image slider")
    nb.changes(b, lambda: nb.choose(b, "tower", "vit"), "the tower dropdown")
    nb.changes(b, lambda: nb.choose(b, "source", "qkv_pca"), "the source dropdown")
    nb.type(b, "template", "a photo")                       # a template without {label}: one red line, no picture
    nb.wait_text(b, "info", "needs {label}")
    nb.changes(b, lambda: nb.type(b, "template", "a photo of a {label}."), "a valid template", from_empty=True)
    nb.finish(b)


def test_correspondence_browser(nb):
    b = "correspondence"
    nb.changes(b, lambda: nb.choose(b, "keypoint"), "the keypoint dropdown")
    nb.changes(b, lambda: nb.check(b, "show_gt"), "the ground-truth checkbox")
    nb.changes(b, lambda: nb.choose(b, "size", "64 px"), "the input-size dropdown")
    nb.wait_text(b, "info", "64×64 px")
    nb.changes(b, lambda: nb.keys(b, "x", "ArrowRight", "ArrowRight"), "the x slider")
    nb.wait_text(b, "info", "custom point")
    nb.changes(b, lambda: nb.keys(b, "y", "ArrowLeft"), "the y slider")
    nb.changes(b, lambda: nb.choose(b, "target", "pair 1 · target"), "the target dropdown")
    nb.wait_text(b, "info", "images of different pairs")
    nb.changes(b, lambda: nb.choose(b, "source", "pair 1 · source"), "the source dropdown")
    nb.changes(b, lambda: nb.choose(b, "keypoint"), "a keypoint after the custom point")
    nb.finish(b)


def test_direction_explorer(nb):
    b = "direction"
    nb.changes(b, lambda: nb.keys(b, "eps", "ArrowRight"), "the ε slider")
    nb.wait_text(b, "info", "6.5")
    nb.changes(b, lambda: nb.keys(b, "page", "ArrowRight"), "the page slider")
    nb.wait_text(b, "range", "directions 9–12 of 12")
    nb.changes(b, lambda: nb.choose(b, "sort", "label-free score"), "the sort dropdown")
    nb.wait_text(b, "range", "directions 1–8 of 12 (by label-free score)")
    nb.changes(b, lambda: nb.pick(b, "highlight", ["direction 11"]), "highlighting a direction")
    nb.wait_text(b, "info", "d11")
    nb.changes(b, lambda: nb.choose(b, "sort", "dev score"), "sorting by the dev score")
    nb.finish(b)
    nb.tab(b, "tabs", "synthetic pairs")
    nb.changes(b, lambda: nb.keys(b, "pair_page", "ArrowRight"), "the pairs' page slider", image="pairs_image")
    nb.wait_text(b, "pairs_info", "this page #8")
    nb.changes(b, lambda: nb.check(b, "only_rejected"), "the only-rejected checkbox", image="pairs_image")
    nb.wait_text(b, "pairs_info", "only rejected: 4 samples")
    if nb.shots: nb.screenshot(b, "pairs-")
    nb.finish(b)
    nb.tab(b, "tabs", "directions")
    nb.changes(b, lambda: nb.keys(b, "eps", "ArrowLeft"), "the ε slider, back on the directions tab")
    nb.changes(b, lambda: nb.keys(b, "eps", "ArrowLeft"), "the ε slider once more")
    nb.wait_text(b, "info", "5.5")
    nb.finish(b)
