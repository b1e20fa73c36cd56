"""A progress bar in a notebook leaves its final state in the saved notebook: the widget
(shown through a display handle) is replaced on closing by a line of text, so that nbviewer,
GitHub or a reopened notebook do not show the widget's fallback frozen at 0%. Run in process
with a real IPython shell, ipywidgets and tqdm's notebook bar, the display messages captured
as Jupyter would store them."""

from __future__ import annotations

import io
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("IPython")

import tqdm.notebook  # noqa: E402
import tqdm.std  # noqa: E402
from IPython.core.displaypub import CapturingDisplayPublisher  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

import jaxinit  # noqa: E402
from jaxinit import _client  # noqa: E402

WIDGET = "application/vnd.jupyter.widget-view+json"
SIZE = 64 * 2**20  # above PROGRESS_MIN_BYTES: a bar is drawn


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[CapturingDisplayPublisher]:
    """An IPython shell whose display messages are captured, and tqdm's notebook bar as the
    client's bar (tqdm.auto picks it in a Jupyter kernel)."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    published = CapturingDisplayPublisher()
    monkeypatch.setattr(shell, "display_pub", published)
    monkeypatch.setattr(_client, "_tqdm", lambda: tqdm.notebook.tqdm)
    try:
        yield published
    finally:
        InteractiveShell.clear_instance()


def _saved(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cell's outputs as a notebook stores them: an update replaces the data of the
    output that has its display_id."""
    saved: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for output in outputs:
        display_id = (output.get("transient") or {}).get("display_id")
        if output.get("update"):
            if display_id in by_id:
                by_id[display_id]["data"] = output["data"]
            continue
        kept = {"data": output["data"]}
        saved.append(kept)
        if display_id:
            by_id[display_id] = kept
    return saved


def test_the_saved_output_is_the_final_state_not_the_widget(notebook: CapturingDisplayPublisher) -> None:
    client = jaxinit.Client("http://127.0.0.1:1", progress=True)
    with client._showing_progress(True, "lecun_normal"):
        client._transport.on_progress(0, SIZE)
        client._transport.on_progress(SIZE, 0)
    shown = notebook.outputs
    assert any(WIDGET in output["data"] for output in shown), "the live notebook shows the widget"
    (saved,) = _saved(shown)
    assert WIDGET not in saved["data"]
    text = saved["data"]["text/plain"]
    assert "lecun_normal" in text and "100%" in text and "64.0M/64.0M" in text, text


def test_a_failed_call_leaves_where_it_stopped(notebook: CapturingDisplayPublisher) -> None:
    client = jaxinit.Client("http://127.0.0.1:1", progress=True)
    with pytest.raises(jaxinit.ServerUnavailable), client._showing_progress(True, "normal"):
        client._transport.on_progress(0, SIZE)
        client._transport.on_progress(SIZE // 4, 0)
        raise jaxinit.ServerUnavailable("gone")
    (saved,) = _saved(notebook.outputs)
    assert WIDGET not in saved["data"] and "25%" in saved["data"]["text/plain"]


def test_outside_notebooks_the_bar_is_tqdms_own() -> None:
    out = io.StringIO()
    bar, close = _client._progress_bar(tqdm.std.tqdm, total=10, file=out, leave=True)
    bar.update(10)
    close()
    assert bar.disable or "100%" in out.getvalue()
