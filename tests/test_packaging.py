"""A built wheel holds every module of the package and of the kernels (as `rodpo_kernels`), with the
compiled top-K selection's source. `.ci/wheel_check.sh` (run by `make test`) installs such a wheel
without `-e` into a fresh virtualenv and runs the command line from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def copy_checkout(dest: Path) -> None:
    """What a clean clone holds: tracked files and untracked ones git does not ignore (without git: the
    tree minus virtualenvs, runs and build outputs)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "data_cache", "build",
                                                                  "*.egg-info", "__pycache__", ".pytest_cache"))
        return
    for name in out.split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_the_kernel_source(tmp_path):
    src = tmp_path / "src"
    copy_checkout(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("rodpo_dist-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith((".py", ".cpp"))}
    expected = {p.relative_to(src).as_posix() for p in (src / "rodpo_dist").rglob("*.py")}
    expected |= {"rodpo_kernels/" + p.relative_to(src / "kernels").as_posix() for p in (src / "kernels").rglob("*")
                 if p.suffix in (".py", ".cpp")}
    assert {"rodpo_dist/config/__init__.py", "rodpo_dist/serve/__init__.py", "rodpo_dist/study/__init__.py",
            "rodpo_kernels/topk_scoring/select.cpp"} <= expected
    assert sorted(expected - shipped) == [] and sorted(shipped - expected) == []
