"""End to end in a real browser: the explorer notebook in JupyterLab, driven by headless Chromium.

Runs every cell of notebooks/07_explorer.ipynb (smoke parameters injected the way
papermill does it) in a throwaway JupyterLab, moves the λ slider of the live negation
view with the keyboard, and checks that the accuracy shown changes and that no cell
and no view shows an error. A screenshot is saved under runs/browser/ for a human to
look at. Run with ``make test-browser``.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "07_explorer.ipynb"
SHOTS = ROOT / "runs" / "browser"
RUN_ALL_TIMEOUT_MS = 150_000

# Resolves when every cell has run (NotebookActions.runAll's promise), or rejects on timeout.
RUN_ALL_JS = """async (timeout) => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.sessionContext.ready;
  const run = app.commands.execute('notebook:run-all-cells');
  const late = new Promise((_, reject) => setTimeout(() => reject(new Error('run-all timed out')), timeout));
  await Promise.race([run, late]);
  return panel.content.widgets.filter(c => c.model.type === 'code').map(c => c.model.executionCount);
}"""
ERRORS_JS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code')
  .flatMap(c => c.model.outputs.toJSON())
  .filter(o => o.output_type === 'error')
  .map(o => o.ename + ': ' + o.evalue)"""
NOTEBOOK_OPEN_JS = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel); }"""


def _accuracies(text: str) -> dict[str, str]:
    """The accuracy rows of the negation view's numbers table."""
    rows = dict(re.findall(r"^(\S+ acc \(%\))\s+([-\d.]+)$", text, flags=re.M))
    assert "val_forget acc (%)" in rows, f"no accuracies shown in the negation view:\n{text}"
    return rows


def _number(text: str, label: str) -> str:
    m = re.search(re.escape(label) + r"\s+([-\d.]+)", text)
    assert m, f"{label!r} not shown in the negation view:\n{text}"
    return m.group(1)


def test_explorer_notebook_in_jupyterlab(lab_server, browser_page, tmp_path):
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    nb = load_notebook_node(str(NOTEBOOK))
    nb = parameterize_notebook(nb, {"smoke": True, "run_dir": str(tmp_path / "run"),
                                    "figures_dir": str(tmp_path / "figures")})
    nbformat.write(nb, lab_server.root / NOTEBOOK.name)
    page = browser_page
    page.goto(lab_server.url(f"lab/tree/{NOTEBOOK.name}"))
    page.wait_for_function(NOTEBOOK_OPEN_JS, timeout=60_000)

    counts = page.evaluate(RUN_ALL_JS, RUN_ALL_TIMEOUT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "explorer_after_run.png"))
    assert all(c is not None for c in counts), f"some cells did not run: execution counts {counts}"
    errors = page.evaluate(ERRORS_JS)
    assert not errors, f"cells raised: {errors}\n(JupyterLab log)\n{lab_server.log_tail()}"

    view = page.locator(".negkit-view").first  # the live negation view (section 2)
    numbers = view.locator(".negkit-numbers")
    numbers.wait_for(timeout=30_000)
    view.scroll_into_view_if_needed()
    before = numbers.inner_text()
    handle = view.locator(".negkit-lambda .noUi-handle")
    handle.focus()
    # Jump to either end of the λ range: at least one end moves the accuracies away from the chosen λ.
    after, previous = before, before
    for key in ("End", "Home"):
        handle.press(key)
        try:
            page.wait_for_function("([el, old]) => el.innerText !== old", arg=[numbers.element_handle(), previous],
                                   timeout=20_000)
        except PlaywrightTimeout:
            continue  # λ already sat at that end
        after = previous = numbers.inner_text()
        if _accuracies(after) != _accuracies(before):
            break
    assert _number(after, "λ") != _number(before, "λ"), "the λ slider did not move"
    assert _accuracies(after) != _accuracies(before), f"no accuracy changed:\n{before}\n---\n{after}"

    # The sign-consensus view answers its K slider too (K = 1: every non-zero element is "consistent").
    consensus = page.locator(".negkit-view").nth(2).locator(".negkit-numbers")
    old_k = consensus.inner_text()
    k_handle = page.locator(".negkit-view").nth(2).locator(".negkit-k .noUi-handle")
    k_handle.focus()
    k_handle.press("Home")
    page.wait_for_function("([el, old]) => el.innerText !== old", arg=[consensus.element_handle(), old_k],
                           timeout=20_000)
    assert re.search(r"^K\s+1$", consensus.inner_text(), flags=re.M), consensus.inner_text()

    page.wait_for_timeout(500)  # let the figures of the new λ and K arrive
    page.screenshot(path=str(SHOTS / "explorer.png"))
    views = page.locator(".negkit-view")
    for i, name in enumerate(("negation", "negation_recorded", "consensus", "forget_vectors")):
        if i < views.count():
            views.nth(i).screenshot(path=str(SHOTS / f"explorer_{name}.png"))
    shown_errors = page.locator(".negkit-error").count()
    assert shown_errors == 0, page.locator(".negkit-error").first.inner_text()
    body = page.locator("body").inner_text()
    for bad in ("Error displaying widget", "Failed to load model class", "Traceback"):
        assert bad not in body, f"the page shows {bad!r}"
    assert list((tmp_path / "figures").glob("explorer_*.png")), "the notebook saved no figure"
