"""The package as users get it: one ``workledger`` namespace, an explicit public surface.

The folders at the root (``core/``, ``stores/``, ``projections/``, ``interfaces/``) are mapped
into ``workledger.*`` by pyproject.toml; an editable checkout can hide a mistake in that
mapping, so the slow test builds the wheel and installs it into a fresh virtualenv.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

import workledger

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "core", "stores", "projections", "interfaces")
FORBIDDEN_TOP_LEVEL = {"core", "stores", "projections", "interfaces"}


def public_modules() -> list[str]:
    """``workledger`` and every module under it whose dotted name has no ``_``-prefixed part."""
    names = ["workledger"]
    for info in pkgutil.walk_packages(workledger.__path__, prefix="workledger."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


# --- the public surface (fast) ----------------------------------------------------------------


def test_the_public_modules_cover_every_layer() -> None:
    """The walk finds the core, the stores, the projections and the interfaces."""
    found = public_modules()
    for expected in (
        "workledger.cli",
        "workledger.core.events",
        "workledger.projections.fold",
        "workledger.stores.memory",
    ):
        assert expected in found


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_declares_its_all_and_each_name_exists(name: str) -> None:
    """STYLE #10: ``__all__`` is present, a list or tuple of unique strings, all defined."""
    module: ModuleType = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = module.__all__
    assert isinstance(exported, list | tuple)
    assert all(isinstance(item, str) for item in exported)
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_no_bare_top_level_package_is_importable_from_the_project() -> None:
    """``core`` and friends exist only as ``workledger.*``; nothing imports them bare."""
    offenders = []
    folders = (*FORBIDDEN_TOP_LEVEL, "tests", "benchmarks")
    for path in (p for folder in folders for p in (ROOT / folder).rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            bare = len(words) >= 2 and words[1].split(".")[0] in FORBIDDEN_TOP_LEVEL
            if bare and words[0] in {"import", "from"}:
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders


# --- the wheel (slow) -------------------------------------------------------------------------


def _copy_sources(destination: Path) -> Path:
    """Build from a copy, so setuptools' build/ and egg-info never touch the working tree."""
    destination.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(source, destination / name)
    return destination


def _run(*argv: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the project (build isolation, as a user gets it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = _copy_sources(work / "src")
    dist = work / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source, cwd=work)
    (built,) = dist.glob("workledger-*.whl")
    return built


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_holds_only_the_workledger_namespace(wheel: Path) -> None:
    """No top-level ``core``/``stores``/``projections``/``interfaces``; ``py.typed`` ships."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("workledger-")}
    assert top_level == {"workledger"}, f"unexpected top-level entries: {top_level}"
    assert "workledger/py.typed" in names
    for module in ("core/events.py", "stores/memory.py", "projections/fold.py", "cli.py"):
        assert f"workledger/{module}" in names
    for asset in ("fleet.html", "fleet.css", "fleet.js"):  # the live page, read at run time
        assert f"workledger/static/{asset}" in names


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_installs_into_a_fresh_venv_and_runs(wheel: Path, tmp_path: Path) -> None:
    """Installed with its dependencies from the index, the CLI and every layer import."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, cli = env_dir / "bin" / "python", env_dir / "bin" / "workledger"
    _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=tmp_path)

    assert "workledger: which workers are alive" in _run(cli, "--help", cwd=tmp_path)
    imports = (
        "import workledger.core.events, workledger.stores.memory, "
        "workledger.projections.fold, workledger.cli"
    )
    _run(python, "-c", imports, cwd=tmp_path)
    where = _run(python, "-c", "import workledger; print(workledger.__file__)", cwd=tmp_path)
    assert str(env_dir) in where, f"imported from the checkout, not the venv: {where}"
