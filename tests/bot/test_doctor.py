"""`imagine-bot doctor` against the Discord-compatible server: a ready set-up passes, and each
check that fails (config, token, database, model, server, channel permissions) says what to fix.

Run in-process (real REST over a socket, a real SQLite file, the real loader's checks); no
bot is started, and doctor must change nothing.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from bot.ops.doctor import ATTACH_FILES, EMBED_LINKS, channel_permissions, run_doctor
from testkit.world import NewWorld


async def _doctor(config: Path) -> tuple[int, dict[str, str]]:
    out = io.StringIO()
    code = await run_doctor(config, out)
    lines = [line for line in out.getvalue().splitlines() if line[:3] in ("ok ", "FIX")]
    return code, {line[5:].split(": ", 1)[0]: line for line in lines}


async def test_a_ready_set_up_passes_every_check(new_world: NewWorld) -> None:
    async with new_world(channels=("art", "lounge")) as world:
        config = world.configure(
            discord={"token": world.token}, moderation={"allowed_channel_ids": [world.art.id]}
        )
        code, lines = await _doctor(config)
    assert code == 0, lines
    assert list(lines) == [
        "config",
        "state",
        "database",
        "model tiny",
        "describe model",  # as shipped: Florence-2, fetched when first asked
        "token",
        f"server {world.guild.id}",
        "#art",
    ]
    assert all(line.startswith("ok ") for line in lines.values())
    assert "new: its tables are made at the first start" in lines["database"]
    assert "logs in as imagine-bot" in lines["token"]
    # Doctor writes nothing: no database file, no identity file beside the config.
    assert not (world.tmp / "imagine.db").exists()
    assert not (world.tmp / "config.database-id").exists()


async def test_each_failing_check_says_what_to_fix(new_world: NewWorld, tmp_path: Path) -> None:
    async with new_world(channels=("art", "lounge")) as world:
        bot_role = world.guild.roles[1]  # the bot's own role
        world.lounge.permission_overwrites.append(
            {"id": bot_role.id, "type": 0, "allow": 0, "deny": ATTACH_FILES}
        )
        stranger = 4242  # a server the bot was never invited to
        (tmp_path / "a-file").write_text("not a folder")
        config = world.configure(
            guild_ids=[world.guild.id, stranger],
            discord={"token": world.token},
            paths={"state_dir": str(tmp_path / "a-file" / "state")},
            database={"url": f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'imagine.db'}"},
            engine={"model": str(tmp_path / "no-such-model")},
        )
        code, lines = await _doctor(config)
        assert code == 1
        assert lines["state"].startswith("FIX") and "a-file is not a folder" in lines["state"]
        assert lines["database"].startswith("FIX") and "does not exist" in lines["database"]
        assert (
            lines["model no-such-model"].startswith("FIX")
            and "does not exist" in (lines["model no-such-model"])
        )
        assert (
            lines[f"server {stranger}"].startswith("FIX")
            and "not in this server" in (lines[f"server {stranger}"])
        )
        assert lines["#lounge"].startswith("FIX") and "lacks Attach Files" in lines["#lounge"]
        assert lines["#art"].startswith("ok ")

        world.configure(discord={"token": "not-the-token"})
        code, lines = await _doctor(config)
        assert code == 1 and lines["token"] == (
            f"FIX  token: Discord rejected the bot token in [discord] token of {config}: copy "
            "the token again from the developer portal (your application → Bot → Reset Token)"
        )
        world.configure(discord={"token": "the token"})  # the docs' placeholder, a space in it
        code, lines = await _doctor(config)
        assert code == 1 and lines["token"].startswith(
            f"FIX  token: the bot token in [discord] token of {config} has a space, line break"
        )

        # backend = "ray": the cluster's address is checked (nothing listens on this port).
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        world.configure(engine={"backend": "ray"}, ray={"address": f"127.0.0.1:{port}"})
        code, lines = await _doctor(config)
        assert code == 1 and lines["ray"].startswith("FIX")
        assert "cannot reach the Ray cluster at [ray] address" in lines["ray"]

        config.write_text("[engine]\nmax_batch_size = 2\n")
        code, lines = await _doctor(config)
        assert code == 1 and list(lines) == ["config"]
        assert "max_batch_size (2) must be at least max_count" in lines["config"]


async def test_a_hub_model_while_the_hub_cannot_be_reached_is_one_line_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub that takes connections and never answers (a firewall dropping packets): each hub
    model not in the cache is one line after one short probe (each was asked of the hub for
    15 s); a bare word is no hub id. `ENDPOINT` points at this machine: never the real hub."""
    import time

    from huggingface_hub import constants

    from testkit.config import database_url, write_config

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    with silent:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        models = {name: {"source": f"test-org/{name}"} for name in ("one", "two")}
        config = write_config(
            tmp_path / "config.toml",
            {
                "database": {"url": database_url(tmp_path)},
                "engine": {"cache_dir": str(tmp_path / "cache")},
                "models": {**models, "typo": {"source": "sdturbo"}},
            },
        )
        started = time.monotonic()
        _, lines = await _doctor(config)
        took = time.monotonic() - started
    assert lines["model one"].startswith(
        "FIX  model one: the model test-org/one is not in the local cache and the Hugging Face "
        "hub cannot be reached (timed out)"
    )
    assert "HF_HUB_OFFLINE=1" in lines["model two"]
    assert lines["model typo"].startswith("FIX  model typo: 'sdturbo' is not a model source")
    assert took < 15, took  # one probe of 5 s for both models


async def test_each_model_says_whether_it_fits(
    new_world: NewWorld, tmp_path: Path, model_cache: Path
) -> None:
    """Sizes from the files' headers (16 bits, int8/fp8, nf4), against `max_memory_gb` or the
    GPU found; what needs a GPU is flagged on a machine without one."""
    import shutil

    import torch

    from engine.tiny import builtin_folder

    folder = tmp_path / "tiny-flux"
    shutil.copytree(builtin_folder("builtin:tiny-flux", model_cache), folder)
    models = {
        "big": {"source": str(folder)},
        "offloaded": {"source": str(folder), "offload": "model"},
    }
    async with new_world() as world:
        config = world.configure(
            discord={"token": world.token},
            engine={"max_memory_gb": 0.3 / 1024},  # 0.3 MiB: its weights take 0.5 at 16 bits
            models=models,
        )
        code, lines = await _doctor(config)
        assert code == 1
        big = lines["model big"]
        assert big.startswith("FIX") and f"local folder {folder}; weights 0.5 MiB at 16 bits" in big
        assert "MiB int8/fp8" in big and "MiB nf4" in big
        assert "0.5 MiB does not fit [engine] max_memory_gb (0.000292969 GiB)" in big
        if torch.cuda.is_available():
            pytest.skip("the rest is for a machine without a GPU")
        offloaded = lines["model offloaded"]
        assert (
            offloaded.startswith("FIX") and "no GPU found, and offload = 'model' needs" in offloaded
        )
        world.configure(discord={"token": world.token}, models={"big": models["big"]})
        code, lines = await _doctor(config)
        assert lines["model big"].startswith("ok ")
        assert lines["model big"].endswith(" MiB nf4; no GPU found: it runs on the CPU")


async def test_the_describe_model_and_the_tagger_count_against_the_memory(
    new_world: NewWorld, tmp_path: Path, model_cache: Path
) -> None:
    """Each of `[describe]`'s models gets a line: its weights at 16 bits from its files'
    headers, against `max_memory_gb` (the image models' memory, which it shares)."""
    import shutil

    from engine.tiny_caption import caption_folder

    folders = {}
    for key, name in (("model", "builtin:tiny-florence2"), ("tagger", "builtin:tiny-tagger")):
        folders[key] = tmp_path / key
        shutil.copytree(caption_folder(name, model_cache), folders[key])
    async with new_world() as world:
        config = world.configure(
            discord={"token": world.token},
            engine={"max_memory_gb": 0.05 / 1024},  # 0.05 MiB: the tagger fits, Florence not
            describe={key: str(folder) for key, folder in folders.items()},
        )
        code, lines = await _doctor(config)
    assert code == 1
    assert lines["describe model"] == (
        f"FIX  describe model: {folders['model']}; weights 0.1 MiB at 16 bits does not fit "
        "[engine] max_memory_gb (4.88281e-05 GiB): pick a smaller one, or leave [describe] "
        "model empty"
    )
    assert lines["tagger"] == (
        f"ok   tagger: {folders['tagger']}; weights 0.0 MiB at 16 bits fits [engine] "
        "max_memory_gb (4.88281e-05 GiB)"
    )


def test_permissions_follow_roles_and_overwrites_in_discords_order() -> None:
    guild, member, role, other = 1, 7, 2, 3
    roles = [
        {"id": guild, "permissions": 0},
        {"id": role, "permissions": ATTACH_FILES | EMBED_LINKS},
        {"id": other, "permissions": 8},  # Administrator, not the member's
    ]
    assert channel_permissions(roles, [role], member, guild, []) == ATTACH_FILES | EMBED_LINKS
    denied = [{"id": role, "type": 0, "allow": 0, "deny": ATTACH_FILES}]
    assert channel_permissions(roles, [role], member, guild, denied) == EMBED_LINKS
    # The member's own overwrite comes last and wins over its roles'.
    back = [*denied, {"id": member, "type": 1, "allow": ATTACH_FILES, "deny": 0}]
    assert channel_permissions(roles, [role], member, guild, back) & ATTACH_FILES
    # Administrator (a role's) ignores every overwrite.
    assert channel_permissions(roles, [other], member, guild, denied) & ATTACH_FILES
