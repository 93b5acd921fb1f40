"""The built wheel, installed into a fresh folder (not editable), runs the commands a user starts with."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip wheel`` then ``pip install --no-deps --target``: returns (wheel, site folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("medbackdoor-*.whl")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp)
    return wheel, site


def _cli(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "MEDBACKDOOR_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "medbackdoor", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_wheel_ships_every_package_file(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "medbackdoor"], cwd=ROOT, capture_output=True, text=True).stdout
    files = [f for f in tracked.split() if "__pycache__" not in f] or [
        str(p.relative_to(ROOT)) for p in (ROOT / "medbackdoor").rglob("*") if p.is_file() and "__pycache__" not in
        p.parts]
    missing = sorted(f for f in files if f not in names)
    assert not missing, f"not in the wheel: {missing}"
    assert "medbackdoor/configs/sweeps/quick.yaml" in names


def test_installed_wheel_runs_reproduce_dry_run_and_data_check(installed, tmp_path):
    _, site = installed
    where = _cli(site, tmp_path, "--version")
    assert where.returncode == 0, where.stderr
    origin = subprocess.run([sys.executable, "-c", "import medbackdoor; print(medbackdoor.__file__)"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert Path(origin.stdout.strip()).is_relative_to(site), origin.stdout  # the wheel, not the checkout
    dry = _cli(site, tmp_path, "reproduce", "--protocol", "quick", "--out", str(tmp_path / "study"), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "20 runs" in dry.stdout and "size-3_seed-0" in dry.stdout and "figure1/trigger" in dry.stdout
    check = _cli(site, tmp_path, "data", "check", "--set", "dataset.options.n_images=30",
                 "--set", "dataset.options.source_size=32", "--json")
    assert check.returncode == 0, check.stderr
    assert '"images": 30' in check.stdout
    missing = _cli(site, tmp_path, "sweep", "no-such-sweep", "--out", str(tmp_path / "x"), "--dry-run")
    assert missing.returncode == 2 and "not a built-in sweep" in missing.stderr
    assert "quick" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
