"""The TOML config: the example documents every key with its default; bad files are explained."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bot.canvas_settings import FixSettings
from bot.config import BotConfig, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_documents_every_key_with_its_default(tmp_path: Path) -> None:
    path = ROOT / "config.reference.toml"
    data = tomllib.loads(path.read_text())
    example = parse_config(data, path, environ={"XDG_STATE_HOME": str(tmp_path)})
    # A relative SQLite file is made absolute in the state folder, and so is the image store.
    state = tmp_path / "imagine-bot"
    assert example.paths.state_dir == state and example.state_from == "the default"
    assert example.database.url == f"sqlite+aiosqlite:///{state / 'imagine-bot.db'}"
    assert example.images.store_dir == state / "imagine-bot-images"
    defaults = dataclasses.replace(example.database, url=BotConfig().database.url)
    images = dataclasses.replace(example.images, store_dir=BotConfig().images.store_dir)
    plain = dataclasses.replace(
        example, path=None, state_from="", paths=BotConfig().paths, database=defaults
    )
    assert dataclasses.replace(plain, images=images) == BotConfig()
    for section in dataclasses.fields(BotConfig):
        if section.name in ("path", "state_from"):
            continue
        keys = {f.name for f in dataclasses.fields(getattr(BotConfig(), section.name))}
        if section.name == "engine":  # [models.<name>], [loras.<name>], [describe] tables
            keys -= {"models", "loras", "describe", "region_model", "upscale_model"}
            keys -= {"fix_detector", "fix_threshold", "fix_hands_detector"}  # [fix]
        documented = set(data[section.name]) | ({"token"} if section.name == "discord" else set())
        assert documented == keys, section.name
    assert example.engine.region_model == data["region"]["model"]  # [region] and [upscale]
    assert example.engine.upscale_model == data["upscale"]["model"] == ""
    assert example.engine.fix_detector == data["fix"]["detector"] == ""  # [fix]
    assert example.engine.fix_threshold == data["fix"]["threshold"]
    assert set(data["fix"]) == {f.name for f in dataclasses.fields(FixSettings)}


def test_the_example_is_short_and_all_defaults(tmp_path: Path) -> None:
    """`config.example.toml`, what a newcomer on one GPU copies: a few keys, each at its
    default (a copy runs as documented), each in the reference, none of Ray, shards or several
    models (it showed all of them)."""
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    reference = tomllib.loads((ROOT / "config.reference.toml").read_text())
    path, env = tmp_path / "config.toml", {"XDG_STATE_HOME": str(tmp_path)}
    assert parse_config(example, path, environ=env) == parse_config({}, path, environ=env)
    assert all(set(keys) <= set(reference[section]) for section, keys in example.items())
    assert not {"ray", "models", "loras", "paths", "ops"} & set(example)
    assert not {"shard_count", "shard_ids", "api_base_url"} & set(example["discord"])
    assert sum(map(len, example.values())) <= 8


def test_the_models_usual_is_spelt_model_or_left_out() -> None:
    """`"model"` for the keys whose default is the model's own (was `0`, or `-1` for guidance:
    easy to misread as zero steps); the numbers still work."""
    said = {"default_steps": "model", "default_guidance": "model", "default_size": "model"}
    models = {"a": {"source": "builtin:tiny", "steps": "model", "guidance": 3.5, "size": 0}}
    config = parse_config({"engine": said, "models": models})
    plain = {"a": {"source": "builtin:tiny", "guidance": 3.5}}
    assert config.engine == parse_config({"models": plain}).engine
    (a,) = config.engine.model_specs
    assert (a.steps, a.guidance, a.size) == (0, 3.5, 0)
    with pytest.raises(ConfigError) as info:
        parse_config({"engine": {"default_steps": "many"}})
    assert str(info.value) == (
        'config: [engine] default_steps must be "model" (the model\'s usual) or a whole '
        "number, not 'many'"
    )


def test_the_state_folder_is_never_beside_a_new_config(tmp_path: Path) -> None:
    """`[paths] state_dir`, else `$IMAGINE_BOT_STATE_DIR`, else the config's folder only where
    an earlier version already keeps its state there, else `$XDG_STATE_HOME/imagine-bot`."""
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "config.toml"
    xdg = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    fresh = parse_config({}, path, environ=xdg)
    assert fresh.paths.state_dir == tmp_path / "xdg" / "imagine-bot"
    named = parse_config({}, path, environ={**xdg, "IMAGINE_BOT_STATE_DIR": "/data"})
    assert (named.paths.state_dir, named.state_from) == (Path("/data"), "$IMAGINE_BOT_STATE_DIR")
    assert named.database.url == "sqlite+aiosqlite:////data/imagine-bot.db"
    assert named.images.store_dir == Path("/data/imagine-bot-images")
    configured = parse_config(
        {"paths": {"state_dir": "../var"}},
        path,
        environ={**xdg, "IMAGINE_BOT_STATE_DIR": "/elsewhere"},
    )
    assert configured.paths.state_dir == tmp_path / "var"  # relative to the config file
    absolute = {"database": {"url": "sqlite+aiosqlite:////srv/x.db"}, "images": {"store_dir": "/i"}}
    kept = parse_config(absolute, path, environ=xdg)
    assert (kept.database.url, kept.images.store_dir) == (
        "sqlite+aiosqlite:////srv/x.db",
        Path("/i"),
    )
    for earlier in ("config.database-id", "imagine-bot.db", "imagine-bot-images"):
        (etc / earlier).touch()  # what an earlier version kept beside its config
        found = parse_config({}, path, environ=xdg)
        assert found.paths.state_dir == etc and "earlier version" in found.state_from, earlier
        (etc / earlier).unlink()


def test_a_config_with_a_few_keys_runs_on_defaults() -> None:
    config = parse_config({"engine": {"model": "builtin:tiny"}, "discord": {"guild_ids": ["42"]}})
    assert config.engine.model == "builtin:tiny"
    assert config.discord.guild_ids == (42,)
    assert config.database.url.startswith("sqlite+aiosqlite:///")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine\nmodel = 1", "not valid TOML"),
        ("[engin]\nmodel = 'x'", "unknown key section engin (did you mean 'engine'?)"),
        ("[engine]\nmax_batch_size = 2", "max_batch_size (2) must be at least max_count (4)"),
        ("[engine]\nsafety_checker = 'yes'", "[engine] safety_checker must be true or false"),
        ("[engine]\nscheduler = 'fast'", "scheduler must be one of default, ddim"),
        ("[database]\nurl = 'imagine.db'", "[database] url must be an SQLAlchemy URL"),
        ("[quota]\ndaily_images = -1", "[quota] daily_images must be 0 or more"),
        (
            "[moderation]\nflagged_images = 'hide'",
            "must be one of 'spoiler', 'refuse_outside_nsfw'",
        ),
        ("[ops]\nlisten = 'localhost'", "[ops] listen must look like '127.0.0.1:9108'"),
        ("discord = 3", "[discord] must be a table"),
        ("[models.a]\nsourc = 'x'", "unknown key [models.a] sourc (did you mean 'source'?)"),
        ("[models.a]\ndescription = 'x'", "[models.a] source is required"),
        ("[engine]\ndefault_model = 'zz'", "default_model 'zz' is not a configured model"),
        ("[loras.l]\nsource = 's'\nmodels = ['q']", "LoRA l: models q are not configured"),
        ("[engine]\nmodels = []", "[engine] models: write [models.<name>] tables instead"),
        ("[models.'a b']\nsource = 'x'", "model name 'a b' must be letters, digits"),
        (
            "[models.a]\nsource = 'x'\nquantize = 'int4'",
            "[engine] model a: quantize must be one of none, fp8, int8, nf4, not 'int4' "
            "(did you mean 'int8'?)",
        ),
        ("[models.a]\nsource = 'x'\noffload = 'cpu'", "offload must be one of none, model"),
        ("[models.a]\nsource = 'x'\nquantise = 'fp8'", "(did you mean 'quantize'?)"),
        ("[models.a]\nsource = 'org/x'\nbase = 'org/y'", "model a: base is for a single-file"),
        ("[engine]\nmax_memory_gb = -2", "[engine] max_memory_gb must be 0 (the GPU's memory)"),
        ("[engine]\nbackend = 'cloud'", "[engine] backend must be local or ray, not 'cloud'"),
        ("[ray]\nreplicas = 0", "[ray] replicas must be at least 1"),
        ("[ray]\nmax_replicas = 2\nmin_replicas = 3", "min_replicas must be between 1 and"),
        ("[ray]\nadress = 'auto'", "unknown key [ray] adress (did you mean 'address'?)"),
        ("[discord]\nshard_ids = [0]", "[discord] shard_ids needs shard_count"),
        ("[discord]\nshard_count = 2\nshard_ids = [2]", "between 0 and shard_count - 1 (1), not 2"),
        ("[discord]\nshard_count = 2\nshard_ids = [1, 1]", "shard_ids lists a shard twice"),
    ],
)
def test_bad_files_say_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_named_models_and_loras() -> None:
    config = parse_config(
        {
            "engine": {"default_model": "b", "max_loaded_models": 2},
            "models": {"a": {"source": "builtin:tiny"}, "b": {"source": "org/b", "steps": 4}},
            "loras": {"ink": {"source": "ink.safetensors", "weight": 0.5, "models": ["a"]}},
        }
    )
    engine = config.engine
    assert [(m.name, m.source, m.steps) for m in engine.model_specs] == [
        ("a", "builtin:tiny", 0),
        ("b", "org/b", 4),
    ]
    assert engine.default_model_name == "b" and engine.max_loaded_models == 2
    assert [(lora.name, lora.weight, lora.models) for lora in engine.loras] == [
        ("ink", 0.5, ("a",))
    ]
    # Without tables, `[engine] model` is the one model, named after its last part.
    (only,) = parse_config({"engine": {"model": "stabilityai/sd-turbo"}}).engine.model_specs
    assert (only.name, only.source) == ("sd-turbo", "stabilityai/sd-turbo")


def test_a_model_base_folder_is_found_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "flux-base").mkdir()
    path = tmp_path / "config.toml"
    path.write_text(
        "[models.f]\nsource = 'flux1-dev.safetensors'\nbase = 'flux-base'\nquantize = 'int8'\n"
        "[models.g]\nsource = 'g.safetensors'\nbase = 'black-forest-labs/FLUX.1-dev'\n"
    )
    f, g = load_config(path).engine.model_specs
    assert (f.base, f.quantize, f.offload) == (str(tmp_path / "flux-base"), "int8", "none")
    assert g.base == "black-forest-labs/FLUX.1-dev"  # a hub id stays one


def test_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"copy config\.example\.toml to config\.toml"):
        load_config(tmp_path / "nope.toml")


def test_the_token_comes_from_the_named_environment_variable() -> None:
    config = parse_config({"discord": {"token_env": "MY_TOKEN"}})
    assert config.resolve_token({"MY_TOKEN": " abc \n"}) == "abc"
    assert config.resolve_token({}) == ""
