"""Small pure parts of the front end: sizes, pacing, Discord's clock, the chart, errors."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta

import discord
import pytest
from PIL import Image

from bot.cli import default_to_run
from bot.errors import NotModerator, Refusal, describe
from bot.images.chart import usage_chart
from bot.ledger import DayUsage, RefusalReason, UsageSummary
from bot.presentation.describe import MAX_SHOWN, shown
from bot.timing.clock import DiscordClock
from bot.timing.throttle import EditThrottle
from engine import Busy, InvalidRequest, Limits
from engine.sizing import Shape, size_for


@pytest.mark.parametrize(
    ("native", "shape", "size"),
    [
        (512, Shape.SQUARE, (512, 512)),
        (512, Shape.PORTRAIT, (512, 768)),
        (512, Shape.LANDSCAPE, (768, 512)),
        (1024, Shape.PORTRAIT, (832, 1216)),
        (1024, Shape.LANDSCAPE, (1216, 832)),
        (64, Shape.PORTRAIT, (64, 96)),
    ],
)
def test_shapes_map_to_the_models_native_sizes(
    native: int, shape: Shape, size: tuple[int, int]
) -> None:
    assert size_for(shape, native, Limits(max_width=2048, max_height=2048)) == size


def test_shapes_shrink_to_fit_the_operators_limits() -> None:
    width, height = size_for(Shape.PORTRAIT, 1024, Limits(max_width=1024, max_height=1024))
    assert height == 1024 and width % 8 == 0 and width < 1024
    assert abs(width / height - 832 / 1216) < 0.02


def test_the_throttle_keeps_each_channel_under_its_window() -> None:
    now = [0.0]
    throttle = EditThrottle(count=2, per=5.0, clock=lambda: now[0])
    assert throttle.try_acquire(1) and throttle.try_acquire(1)
    assert not throttle.try_acquire(1)
    assert throttle.try_acquire(2)  # another channel has its own window
    now[0] = 5.01
    assert throttle.try_acquire(1)


def test_discords_clock_only_moves_forward() -> None:
    mono = [100.0]
    clock = DiscordClock(monotonic=lambda: mono[0])
    start = clock.now()
    clock.observe(start - timedelta(minutes=5))  # an old timestamp says nothing new
    assert abs((clock.now() - start).total_seconds()) < 1
    clock.observe(start + timedelta(minutes=10))  # Discord is ahead of this host
    mono[0] += 1
    assert clock.now() >= start + timedelta(minutes=10, seconds=1)


def test_a_token_is_given_up_a_minute_before_it_dies() -> None:
    clock = DiscordClock()
    created = clock.now() - timedelta(minutes=13)
    snowflake = discord.utils.time_snowflake(created)
    assert clock.token_usable(snowflake)
    clock.observe(created + timedelta(minutes=14, seconds=5))
    assert not clock.token_usable(snowflake)


def test_the_usage_chart_is_a_png_with_every_day() -> None:
    since = datetime(2026, 11, 17, tzinfo=UTC)
    summary = UsageSummary(
        guild_id=1,
        since=since,
        until=since + timedelta(days=7),
        days=(DayUsage(date(2026, 11, 18), 12, 4, 2), DayUsage(date(2026, 11, 23), 3, 1, 1)),
        users=(),
        user_days=(),
        refusals=(),
    )
    png = usage_chart(summary, 7)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (800, 360)
        bar = image.convert("RGB").getpixel((56 + 1 * 106 + 53, 300))  # 11-18's bar
        empty = image.convert("RGB").getpixel((56 + 2 * 106 + 53, 300))  # 11-19: no bar
        assert bar != empty


def test_errors_become_messages_users_can_read() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    refusal = describe(Refusal(RefusalReason.QUOTA, "Used up.", when))
    assert refusal.text == f"Used up. You can make more <t:{int(when.timestamp())}:R>."
    assert describe(NotModerator()).text.startswith("Only moderators")
    assert describe(InvalidRequest("steps", "Steps must be at most 50.")).text.endswith("50.")
    assert "queue is full" in describe(Busy(64, 64)).text
    unexpected = describe(KeyError("secret internals"))
    assert unexpected.error_id and unexpected.error_id in unexpected.text
    assert "secret" not in unexpected.text and "KeyError" not in unexpected.text


def test_the_cli_reads_a_bare_config_option_as_run() -> None:
    assert default_to_run(["--config", "x.toml"]) == ["run", "--config", "x.toml"]
    assert default_to_run(["-v", "--config=x.toml"]) == ["-v", "run", "--config=x.toml"]
    assert default_to_run(["generate", "--config", "x", "a cat"])[0] == "generate"
    assert default_to_run([]) == []


def test_a_long_described_prompt_is_cut_after_a_whole_tag_or_word() -> None:
    """A tagger's long list is shown (and imagined) up to its last whole tag; prose up to its
    last whole word; short prompts whole, on one line."""
    tags = "1girl, " + ", ".join(f"tag{n} long hair" for n in range(60))  # 450th: "long h"
    cut = shown(tags)
    assert len(cut) <= MAX_SHOWN and tags.startswith(cut) and cut.endswith("long hair")
    prose = " ".join(["word"] * 89) + " longwordattheend"  # 462 characters
    cut = shown(prose)
    assert len(cut) <= MAX_SHOWN and prose.startswith(cut) and cut.endswith(" word")
    assert shown("a  cat\non a mat") == "a cat on a mat"
