"""The README and docs/ as a newcomer meets them: every command marked runnable runs offline,
every relative link leads somewhere, every file and test they name exists.

How a fenced `bash` block is marked (docs/development.md says the same for writers):

- info string `bash title="offline"`: run as written;
- after `<!-- test: with --model builtin:tiny -->`: run with `--model builtin:tiny` added to
  every `imagine-bot generate` (a real model's quick start, checked offline);
- after `<!-- not run by the tests: REASON -->`: left alone, for the reason given.

Commands run with bash in one scratch folder beside links to the checkout's files (so
`.venv/bin/imagine-bot` and `config.example.toml` are where a reader has them, and what they
write stays out of the checkout), with the hub off and the tests' tiny-model cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 10 * 1024

FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)
MARK = re.compile(
    r"<!--\s*(?P<mark>test: with --model builtin:tiny|not run by the tests:[^>]*\S)\s*-->\s*$"
)
SHELL = {"bash", "sh", "shell", "console"}
#: Taken as done: `.ci/run` runs it before the tests (and running it from the scratch folder
#: would reinstall the project from there).
DONE_BY_CI = re.compile(r"^bash \.ci/setup\s*(#.*)?$")
GENERATES = re.compile(r"^(?:\.venv/bin/)?imagine-bot generate\b")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)|<img [^>]*src=\"(?P<src>[^\"]+)\"")
#: Repository paths in code spans: `bot/jobs/run.py`, `tests/x.py::test_y`, `deploy/...`.
REPO_PATH = re.compile(
    r"`(?P<path>(?:bot|engine|bench|testkit|tests|deploy|migrations|docs|\.ci)/[\w./-]*\w)"
    r"(?:::(?P<test>\w+))?`"
)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    info: str
    mark: str
    body: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def shell_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for fence in FENCE.finditer(text):
        info = fence["info"].strip()
        if info.split(" ", 1)[0] not in SHELL:
            continue
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        body = "\n".join(line[len(fence["indent"]) :] for line in fence["body"].splitlines())
        line = text.count("\n", 0, fence.start()) + 1
        found.append(Block(page, line, info, mark["mark"] if mark else "", body))
    return found


def commands(block: Block) -> list[str]:
    """The block's commands as they are run (comment lines and `bash .ci/setup` left out)."""
    run = []
    for line in block.body.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or DONE_BY_CI.match(line):
            continue
        if block.mark.startswith("test:") and GENERATES.match(line) and "--model" not in line:
            command, hash_, comment = line.partition(" # ")
            line = f"{command.rstrip()} --model builtin:tiny" + (
                f"  {hash_}{comment}" if hash_ else ""
            )
        run.append(line)
    return run


def runnable(block: Block) -> bool:
    return block.info == 'bash title="offline"' or block.mark.startswith("test:")


def test_every_shell_block_runs_or_says_why_not() -> None:
    unmarked = [
        str(b) for page in PAGES for b in shell_blocks(page) if not runnable(b) and not b.mark
    ]
    assert not unmarked, (
        'shell blocks neither marked runnable (```bash title="offline"`, or after '
        "<!-- test: with --model builtin:tiny -->) nor saying why not "
        f"(<!-- not run by the tests: REASON -->): {unmarked}"
    )


def _checkout() -> set[str]:
    """The top-level entries a fresh clone has, after `.ci/setup`: never a developer's own
    `config.toml` or database, which a documented command would then read or overwrite."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return {path.split("/", 1)[0] for path in listed if (ROOT / path).exists()} | {".venv"}


def test_runnable_commands_run_offline(model_cache: Path, tmp_path: Path) -> None:
    """Every runnable block of every page, in order, in one scratch folder (a page may use
    what an earlier block of it wrote); a command that two pages share runs once."""
    for name in _checkout():
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "IMAGINE_BOT_CACHE": str(model_cache), "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    done: set[str] = set()
    ran = 0
    for page in PAGES:
        for block in filter(runnable, shell_blocks(page)):
            for command in commands(block):
                if command in done:
                    continue
                done.add(command)
                out = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", command],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                assert out.returncode == 0, (
                    f"{block}: `{command}` failed:\n{out.stdout}{out.stderr}"
                )
                ran += 1
    assert ran >= 5  # the README's offline loop, the quick start, the docs' recipes


def _slug(heading: str) -> str:
    """A heading's anchor as MkDocs' `toc` makes it (Python-Markdown's default slugify)."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6} (.+?)\s*$", text, re.M)}


def test_relative_links_lead_to_a_file_and_a_heading() -> None:
    broken = []
    for page in PAGES:
        for link in LINK.finditer(FENCE.sub("", page.read_text())):
            target = link["target"] or link["src"]
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_files_and_tests_the_docs_name_exist() -> None:
    """Every repository path in a code span exists, and so does every test it names; a
    `::test_name` alone names a test of the last file named on the same line."""
    missing = []
    for page in PAGES:
        for line in page.read_text().splitlines():
            last: Path | None = None
            for span in re.findall(r"`([^`]+)`", line):
                found = REPO_PATH.fullmatch(f"`{span}`")
                test = found["test"] if found else span.removeprefix("::")
                if found:
                    last = ROOT / found["path"]
                    if not last.exists():
                        missing.append(f"{page.relative_to(ROOT)}: {found['path']}")
                        last = None
                        continue
                elif not (span.startswith("::") and last is not None):
                    continue
                if test and last is not None and last.suffix == ".py":
                    if not re.search(rf"^\s*(async )?def {test}\(", last.read_text(), re.M):
                        missing.append(
                            f"{page.relative_to(ROOT)}: {last.relative_to(ROOT)}::{test}"
                        )
    assert not missing, missing


def test_reliability_rows_name_their_tests() -> None:
    """Each row of the Reliability table shows its fault by a test, as its format says."""
    table = (ROOT / "docs" / "reliability.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith("| ") and "`tests/" not in r]
    assert rows == ["| Fault or input | Test | Outcome |"], rows


def test_the_invite_asks_for_what_the_bot_checks() -> None:
    """The invite URL's permissions: what `doctor` checks in each channel, plus Read Message
    History (delivery looks for an earlier post after a crash)."""
    from bot.ops.doctor import CHANNEL_PERMISSIONS

    wanted = sum(CHANNEL_PERMISSIONS) | 1 << 16
    for page in (ROOT / "README.md", ROOT / "docs" / "setup.md"):
        asked = {int(n) for n in re.findall(r"permissions=(\d+)", page.read_text())}
        assert asked == {wanted}, (page.name, asked, wanted)


def test_the_readme_stays_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes: move details into docs/"
