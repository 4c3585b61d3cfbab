"""JupyterLab is part of the product (``make lab``): a real JupyterLab server on a free port
with its own token, driven by a real headless Chromium (Debian's chromium + chromium-driver,
through selenium). It opens ``bench.ipynb``, runs all cells with the default parameters from
the Run menu, saves, and the test checks that the figure appears and that no cell shows an
error. Server, kernels and browser are stopped afterwards, whatever happens.

The notebook is a copy in a temporary folder, so the committed one is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
RUN_TIMEOUT_S = 240  # within pytest-timeout's 300 s per test

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install -y chromium chromium-driver; .ci/run does)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def jupyterlab(root: Path) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """A JupyterLab server on 127.0.0.1 serving ``root``: (base URL, token, process). Its
    settings, workspaces and runtime files live under ``root`` too; the whole process group
    (server and kernels) is stopped on the way out."""
    port, token = free_port(), secrets.token_hex(16)
    state = root / ".jupyter-state"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTERLAB_WORKSPACES_DIR=str(
                   state / "workspaces"))
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
         f"--ServerApp.root_dir={root}", "--allow-root",
         f"--LabServerApp.user_settings_dir={state / 'settings'}",
         f"--LabServerApp.workspaces_dir={state / 'workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.news_url=", "--ServerApp.terminals_enabled=False"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"jupyter lab exited: {(root / 'jupyterlab.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    return True
            except OSError:
                return False

        wait_until(up, 90, "the JupyterLab server")
        yield base, token, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # anything of the group still there
        server.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[object]:
    """Headless Chromium through chromedriver, with its own empty profile; no background
    network traffic (this machine reaches no host outside it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def click_menu(driver, menu: str, command: str) -> None:
    """Open the menu bar's ``menu`` and click the item that runs ``command``."""
    from selenium.webdriver.common.by import By

    item = wait_until(lambda: [e for e in driver.find_elements(
        By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == menu], 60, f"the {menu} menu")
    item[0].click()
    entry = wait_until(lambda: driver.find_elements(
        By.CSS_SELECTOR, f'.lm-Menu-item[data-command="{command}"]'), 30, command)
    entry[0].click()


def saved_notebook(base: str, token: str, name: str) -> dict | None:
    """The notebook as saved on disk; None while a save is still writing it. jupyter_server
    writes a notebook in place (its backup copy is the intermediate file), so a read that
    lands mid-write sees half a file and answers 400 "Unreadable Notebook"."""
    try:
        with urllib.request.urlopen(f"{base}/api/contents/{name}?content=1&token={token}",
                                    timeout=30) as response:
            return json.load(response)["content"]
    except urllib.error.HTTPError as exc:
        if exc.code == 400 and b"Unreadable Notebook" in exc.read():
            return None
        raise


def saved_in_the_ui(driver) -> bool:
    """The notebook's tab no longer marked dirty: JupyterLab has its save's answer, so the
    server has finished writing the file."""
    from selenium.webdriver.common.by import By

    tabs = driver.find_elements(By.CSS_SELECTOR, ".lm-DockPanel-tabBar .lm-TabBar-tab")
    return bool(tabs) and not any("jp-mod-dirty" in (t.get_attribute("class") or "")
                                  for t in tabs)


@pytest.mark.parametrize("broken", [False, True], ids=["as-committed", "a-failing-cell"])
def test_jupyterlab_runs_the_bench_notebook_in_a_real_browser(tmp_path: Path,
                                                              broken: bool) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "bench.ipynb", root / "bench.ipynb")
    if broken:  # the check itself: a cell that raises must fail the test
        notebook = json.loads((root / "bench.ipynb").read_text())
        cell = next(c for c in notebook["cells"] if c["cell_type"] == "code"
                    and "parameters" not in c["metadata"].get("tags", []))
        cell["source"] = ["raise RuntimeError('planted failure')\n"] + cell["source"]
        (root / "bench.ipynb").write_text(json.dumps(notebook))
        with pytest.raises(AssertionError, match="planted failure"):
            drive(root, tmp_path)
        return
    drive(root, tmp_path)


def drive(root: Path, tmp_path: Path) -> None:
    """Open ``root/bench.ipynb`` in JupyterLab in Chromium, run all cells, save, and check."""
    from selenium.webdriver.common.by import By

    before = {name: (REPO / "notebooks" / name).read_bytes() for name in ("bench.ipynb",)}
    with jupyterlab(root) as (base, token, server), chromium(tmp_path / "profile") as driver:
        driver.get(f"{base}/lab/tree/bench.ipynb?token={token}")
        wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120,
                   "the notebook to open")
        wait_until(lambda: "Idle" in driver.find_element(By.ID, "jp-main-statusbar").text,
                   120, "the kernel to start")
        code_cells = len(driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"))
        click_menu(driver, "Run", "runmenu:run-all")

        def shown_errors() -> list[str]:
            stderr = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-OutputArea-output"
                                          "[data-mime-type='application/vnd.jupyter.stderr']")
            return [e.text[:500] for e in stderr
                    if "Traceback" in e.text or "Error" in e.text.split(":", 1)[0]]

        def all_ran() -> bool:
            errors = shown_errors()  # Run All stops at an error: fail now, not at the timeout
            assert errors == [], errors
            prompts = [e.text for e in driver.find_elements(
                By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt")]
            return len(prompts) == code_cells and all(
                p.strip() not in ("[ ]:", "[*]:", "") for p in prompts)

        wait_until(all_ran, RUN_TIMEOUT_S, "every cell to run", interval=2)
        figure = wait_until(lambda: driver.find_elements(
            By.CSS_SELECTOR, ".jp-Notebook .jp-OutputArea-output img"), 60, "the figure")
        assert figure[-1].size["width"] > 100 and figure[-1].size["height"] > 50
        click_menu(driver, "File", "docmanager:save")
        # Read only once the save has been answered: a read during the write would see half
        # a file, and the server would then "repair" it from its backup under the writer.
        wait_until(lambda: saved_in_the_ui(driver), 60, "the save to finish")

        def saved_and_complete() -> dict | None:
            nb = saved_notebook(base, token, "bench.ipynb")
            return nb if nb and all(c.get("execution_count") for c in nb["cells"]
                                    if c["cell_type"] == "code") else None

        notebook = wait_until(saved_and_complete, 60, "the saved notebook")
        outputs = [o for c in notebook["cells"] if c["cell_type"] == "code"
                   for o in c["outputs"]]
        assert [o for o in outputs if o["output_type"] == "error"] == []
        assert any("image/png" in o.get("data", {}) for o in outputs)
        assert server.poll() is None
    assert server.poll() is not None  # stopped, kernels with it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, 0)
        pytest.fail("a process of the JupyterLab session is still running")
    assert {n: (REPO / "notebooks" / n).read_bytes() for n in before} == before
