"""What `pip install .` puts into site-packages: one import name, `longdoc`, and its command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from checkout import ROOT


def build_wheel(out: Path) -> Path:
    """The project's wheel, built from a copy of the files a release ships (the checkout stays clean)."""
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "stages", source / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    return next((out / "dist").glob("longdoc-*.whl"))


@pytest.mark.slow
def test_the_wheel_installs_one_import_name_and_a_working_command(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"longdoc"}, top
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt"))
    assert "longdoc = longdoc.cli:main" in entry_points

    # A fresh venv with the wheel alone, seeing this environment's dependencies (click, ...)
    # through a plain path entry: the .pth files of this environment, among them the
    # editable install of the checkout, are not read from there.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: through that path entry pip sees the checkout's editable install, same name and
    # version, and would otherwise call the wheel installed already (pip 26.3 does) and install nothing.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--ignore-installed", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    ours = sorted(p.name for p in site.iterdir() if p.name.startswith("longdoc"))
    assert [n for n in ours if not n.endswith(".dist-info")] == ["longdoc"], ours

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    alone = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the venv
    for command in ([str(venv / "bin" / "longdoc"), "--help"], [str(python), "-m", "longdoc", "--help"]):
        result = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=120, env=alone)
        assert result.returncode == 0, result.stderr
        assert "embed" in result.stdout and "predict" in result.stdout
    located = subprocess.run([str(python), "-c", "import longdoc; print(longdoc.__file__)"], cwd=elsewhere,
                             capture_output=True, text=True, check=True, env=alone).stdout.strip()
    assert Path(located).is_relative_to(site), located  # the wheel's copy, not the checkout's
    usage = subprocess.run([str(venv / "bin" / "longdoc"), "embed", "--help"], cwd=elsewhere,
                           capture_output=True, text=True, timeout=120, env=alone)
    assert usage.stdout.startswith("Usage: longdoc embed "), usage.stdout[:80]  # named as it was run
    refused = subprocess.run([str(venv / "bin" / "longdoc"), "embed", "--bogus"], cwd=elsewhere,
                             capture_output=True, text=True, timeout=120, env=alone)
    assert refused.returncode == 2 and refused.stderr.startswith("error: No such option")
