"""One namespace: a regular (non-editable) install puts only ``memscore`` into
site-packages, so a user's own ``models/``, ``tasks/``, ``storage/`` or ``flows/``
packages in the working folder neither shadow memscore nor are shadowed by it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools leaves build/ in the tree it builds, and stale files
    # there would end up in later wheels.
    tree = out / "src"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                              "sample-images", "sample-scores", ".memscore-cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(tree)], check=True, cwd=out)
    (built,) = out.glob("memscore-*.whl")
    return built


def test_wheel_installs_only_the_memscore_package(wheel):
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert top == {"memscore", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    names = zipfile.ZipFile(wheel).namelist()
    for layer in ("flows", "tasks", "models", "storage"):
        assert f"memscore/{layer}/__init__.py" in names


def test_users_own_models_and_tasks_packages_do_not_collide(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True)
    work = tmp_path / "work"  # a user's project with generic package names of its own
    for name in ("models", "tasks", "storage", "flows"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"OWNER = 'user-{name}'\n")
    (work / "storage" / "uris.py").write_text("OWNER = 'user-storage-uris'\n")
    # The installed copy must win over the checkout: drop the editable finder's path by
    # running with only the --target folder and the venv's third-party packages.
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = (
        "import memscore, memscore.storage.uris, memscore.flows.cli, models, tasks, storage.uris;"
        f"assert memscore.__file__.startswith({str(site)!r}), memscore.__file__;"
        f"assert memscore.storage.uris.__file__.startswith({str(site)!r});"
        "assert models.OWNER == 'user-models' and tasks.OWNER == 'user-tasks';"
        "assert storage.uris.OWNER == 'user-storage-uris';"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    # The console script's entry point, from the same folder.
    listed = subprocess.run([sys.executable, "-m", "memscore.flows.cli", "models"], cwd=work, env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "resmem" in listed.stdout
    script = site / "bin" / "memscore"
    assert script.is_file()
    listed = subprocess.run([str(script), "models"], cwd=work, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "resmem" in listed.stdout
