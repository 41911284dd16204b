"""The self-hosting files are linted as their own tools would: the Dockerfile by hadolint,
compose.yaml against the Compose specification's schema, the systemd unit by
`systemd-analyze verify` (where systemd is installed), and they match the project."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_the_dockerfile_passes_hadolint_and_uses_ci_set_up() -> None:
    done = _run(BIN / "hadolint", "--no-color", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "RUN bash .ci/setup" in text  # the image is set up by CI's own script
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text
    # The bot's state goes on the /data volume, never beside the config in /config.
    assert "IMAGINE_BOT_STATE_DIR=/data" in text and 'VOLUME ["/data"]' in text


def test_compose_matches_the_compose_schema() -> None:
    done = _run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "compose.yaml").read_text()
    assert "- ./config:/config:ro" in text and "- data:/data" in text  # state on a volume


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = (ROOT / "deploy" / "imagine-bot.service").read_text()
    assert "ExecStart=/opt/imagine-bot/.venv/bin/imagine-bot run --config" in unit
    # verify checks that ExecStart exists: point it at this checkout's own command.
    local = unit.replace("/opt/imagine-bot/.venv/bin/imagine-bot", str(BIN / "imagine-bot"))
    (tmp_path / "imagine-bot.service").write_text(local)
    done = _run(analyze, "verify", tmp_path / "imagine-bot.service")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit
    # /etc is read-only under ProtectSystem=strict: the state goes to the StateDirectory.
    assert "Environment=IMAGINE_BOT_STATE_DIR=/var/lib/imagine-bot" in unit
    assert "StateDirectory=imagine-bot" in unit and "ReadWritePaths=/var/lib/imagine-bot" in unit
