"""`imagine-bot generate` as a user runs it: a real process writing real PNG files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import read_parameters


def run_cli(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("imagine-bot")
    command = [exe] if exe else [sys.executable, "-m", "bot"]
    env = {**os.environ, "IMAGINE_BOT_CACHE": str(cache)}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=240
    )


def test_generate_writes_pngs_with_the_seed(model_cache: Path, tmp_path: Path) -> None:
    done = run_cli(
        "generate",
        "--model",
        "builtin:tiny",
        "a robot painting",
        "--seed",
        "7",
        "--count",
        "2",
        "--out",
        "out/robot.png",
        cache=model_cache,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines == ["wrote out/robot-1.png (seed 7)", "wrote out/robot-2.png (seed 8)"]
    for name, seed in (("robot-1.png", 7), ("robot-2.png", 8)):
        params = read_parameters((tmp_path / "out" / name).read_bytes())
        assert params is not None
        assert (params.seed, params.prompt, params.model) == (
            seed,
            "a robot painting",
            "builtin:tiny",
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "65x64"], "Width must be a multiple of 8"),
        (["--size", "big"], "--size must look like 512x768"),
        (["--model", "builtin:nope"], "Could not load model"),
    ],
)
def test_bad_options_end_with_one_clear_line(
    model_cache: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli(
        "generate", "--model", "builtin:tiny", "x", *args, cache=model_cache, cwd=tmp_path
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.png"))


def test_a_bad_config_file_is_named_with_the_key_to_fix(model_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[engine]\nmodle = "builtin:tiny"\nmax_steps = "many"\n')
    done = run_cli("generate", "--config", "bad.toml", "x", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown key [engine] modle (did you mean 'model'?)" in done.stderr
    assert "[engine] max_steps must be a whole number" in done.stderr
    assert "Traceback" not in done.stderr
