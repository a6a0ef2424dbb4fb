"""The wheel holds lifeline's product packages only and installs as a working `lifeline` command;
`deploy/install.sh --production` stages a cabinet install with nothing but what production needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = {"lifeline", "edge_agent", "gateway", "console", "firmware_stubs", "simulators"}
_NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "dist", "*.egg-info",
                                     ".hypothesis", ".pytest_cache", "*.nbi", "*.nbc")

pytestmark = pytest.mark.integration  # builds with pip (build isolation fetches setuptools)


def run(args: list[str | Path], cwd: Path, timeout: float = 300, **env: str) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the whole source tree (as a clone holds it)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", base / "dist", source], base)
    (built,) = (base / "dist").glob("lifeline-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed; its dependencies are this one's."""
    env = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(env, with_pip=True)
    purelib = Path(subprocess.check_output([env / "bin" / "python", "-c",
                                            "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True).strip())
    # a plain path entry: the dependencies, without this environment's .pth hooks (editable lifeline)
    (purelib / "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([env / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], env.parent)
    yield env


def test_the_wheel_holds_only_the_product(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == PRODUCT, f"top-level entries of {wheel.name}: {sorted(top)}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    scenarios = {Path(n).name for n in names if n.startswith("simulators/scenarios/")}
    assert {"mixed.toml", "pipes.toml"} <= scenarios
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    assert all("extra ==" in r for r in requires if "pytest" in r or "hypothesis" in r), requires
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "lifeline = lifeline.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_wheel_runs_without_the_source_tree(installed: Path, tmp_path: Path) -> None:
    bin_dir = installed / "bin"
    assert "lifeline, version" in run([bin_dir / "lifeline", "--version"], tmp_path)
    commands = run([bin_dir / "lifeline", "--help"], tmp_path)
    for name in ("agent", "gateway", "demo", "simulate", "precompile"):
        assert f"  {name} " in commands, commands
    assert "  bench " not in commands  # the benchmarks stay in the source tree
    sample = tmp_path / "agent.toml"
    shutil.copy(ROOT / "deploy" / "agent.sample.toml", sample)
    assert "OK: agent" in run([bin_dir / "lifeline", "agent", "--check", "--config", sample], tmp_path)
    where = run([bin_dir / "python", "-c",
                 "import lifeline, simulators.scenario as s; print(lifeline.__file__); "
                 "print(s.load_scenario(s.find_scenario('mixed')).name)"], tmp_path)
    assert str(installed) in where.splitlines()[0] and where.splitlines()[1] == "mixed"
    for package in ("tests", "benchmarks"):
        probe = subprocess.run([bin_dir / "python", "-c", f"import {package}"], cwd=tmp_path,
                               capture_output=True, text=True)
        assert probe.returncode != 0, f"`import {package}` must fail outside the source tree"


def test_install_sh_production_installs_only_what_production_needs(tmp_path: Path) -> None:
    """--production (staged with --root): a wheel install without test tools, units pointing at
    the install, sample configs in /etc/lifeline, and the kernel cache filled ahead."""
    stage = tmp_path / "root"
    out = run(["bash", ROOT / "deploy" / "install.sh", "--production", "--root", stage], ROOT,
              timeout=900, PIP_DISABLE_PIP_VERSION_CHECK="1")
    python = stage / "opt" / "lifeline" / ".venv" / "bin" / "python"
    listed = run([python, "-m", "pip", "list", "--format=freeze"], tmp_path).lower()
    assert "lifeline==0.1.0" in listed and "numba==" in listed
    for tool in ("pytest", "hypothesis", "atheris"):
        assert f"{tool}==" not in listed, f"{tool} is a test tool: --production must not install it"
    unit = (stage / "etc" / "systemd" / "system" / "lifeline-agent.service").read_text()
    assert "ExecStart=/opt/lifeline/.venv/bin/lifeline agent --config /etc/lifeline/agent.toml" in unit
    assert "NUMBA_CACHE_DIR=/var/cache/lifeline/numba" in unit
    assert (stage / "etc" / "lifeline" / "agent.toml").is_file()
    assert (stage / "etc" / "lifeline" / "gateway.toml").is_file()
    assert list((stage / "var" / "cache" / "lifeline" / "numba").rglob("*.nbi")), out[-2000:]
    assert "compiling kernels 4/4" in out
