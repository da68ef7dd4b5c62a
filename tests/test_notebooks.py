"""The analysts' notebooks run top to bottom on a real daemon's data, and are committed clean."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import nbformat
import pytest
from nbclient import NotebookClient

from workledger.core.log import LogConfig
from workledger.core.nats_server import EmbeddedNats
from workledger.demo import run_demo

from .test_daemon_process import daemon

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


class DemoData(NamedTuple):
    """Where a stopped daemon left the analysts' copy of a demo run."""

    data_dir: Path
    stream: str


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoData]:
    """A few seconds of the demo fleet at 30x, folded by a `workledger project` process."""
    root = tmp_path_factory.mktemp("notebook-data")
    suffix = uuid.uuid4().hex[:12]
    with EmbeddedNats(root / "nats") as server:
        config = LogConfig(
            servers=(server.url,), stream=f"WL_{suffix}", subject_prefix=f"wl{suffix}"
        )
        with daemon(config, root / "state") as (proc, client):
            stats = anyio.run(_demo, config, backend="asyncio")
            client.health(wait_for=stats.total, timeout=30)
            proc.send_signal(signal.SIGTERM)  # the final analysts' copy holds every event
            assert proc.wait(timeout=15) == 0
        yield DemoData(root / "state", config.stream)


async def _demo(config: LogConfig) -> Any:
    return await run_demo(config, workers=12, seed=7, speed=30, duration=4)


def executed(path: Path, data: DemoData) -> Any:
    """The notebook run by a kernel from this venv, as Jupyter would, in its own folder."""
    notebook = nbformat.read(path, as_version=4)
    env = {
        "WORKLEDGER_DATA_DIR": str(data.data_dir),
        "WORKLEDGER_STREAM": data.stream,
        # Headless: the kernel's inline backend renders figures as PNG outputs (plain Agg
        # would render nothing to check).
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    client = NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    client.execute(env={**os.environ, **env})  # the kernel process's environment
    return notebook


def figures(notebook: Any) -> int:
    """How many images the notebook's cells produced."""
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_there_are_notebooks_for_utilization_and_for_slots_and_failures() -> None:
    """The two notebooks the analysts asked for exist."""
    names = [path.name for path in NOTEBOOKS]
    assert {"fleet_utilization.ipynb", "slots_and_failures.ipynb"} <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_carry_no_outputs_or_execution_counts(path: Path) -> None:
    """A committed notebook is code and prose only: no outputs, no execution counts."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook with code"
    assert all(cell.outputs == [] for cell in code), "outputs cleared"
    assert all(cell.execution_count is None for cell in code), "execution counts cleared"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_each_notebook_runs_top_to_bottom_on_a_real_daemons_data(
    path: Path, demo_data: DemoData
) -> None:
    """Every cell runs without error against a demo run, and the charts are drawn."""
    notebook = executed(path, demo_data)
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors, errors
    assert figures(notebook) >= 4, "each notebook draws its charts"
