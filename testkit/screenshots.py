"""The README's pictures of the bot in Discord, drawn from what the real bot posts.

    python -m testkit.screenshots [--out docs/images]

Runs the real `imagine-bot run` against the Discord-compatible test server with the offline
`builtin:tiny` model, asks `/imagine` for four images (the 2x2 grid) and for one, and draws
each result message as Discord's dark theme shows it: the message's own text, attachment,
embed and buttons, composed with Pillow (no browser here, and the test server has no client
to screenshot). The tiny model's random weights make noise, so the images are noise; a real
model puts pictures in the same places. Emoji on buttons are left out (no emoji font).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from engine.tiny import builtin_folder, default_cache_dir

from .discord_server import Message
from .jobs import wait_result
from .world import open_world

__all__ = ["draw_message", "main"]

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a lighthouse at dusk, watercolour"
WIDTH = 760
#: Discord's dark theme (its client's colours).
BACKGROUND, EMBED, TEXT, MUTED = "#313338", "#2b2d31", "#dbdee1", "#949ba4"
BUTTONS = {1: "#5865f2", 2: "#4e5058", 3: "#248046", 4: "#da373c"}
MENTION = re.compile(r"<@!?(\d+)>")


def _font(size: int, *, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu"):
        if (Path(folder) / name).exists():
            return ImageFont.truetype(str(Path(folder) / name), size)
    return ImageFont.load_default(size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _embed(draw: ImageDraw.ImageDraw, embed: Mapping[str, Any], x: int, y: int) -> int:
    """Draw a rich embed (colour bar, title, inline fields three a row, footer); its bottom."""
    width, pad = 440, 12
    fields = embed.get("fields", [])
    rows = (len(fields) + 2) // 3
    height = pad + 22 + rows * 42 + (24 if "footer" in embed else 0) + pad
    draw.rounded_rectangle((x, y, x + width, y + height), 4, fill=EMBED)
    draw.rectangle((x, y, x + 3, y + height), fill=f"#{embed.get('color', 0x5865F2):06x}")
    draw.text((x + 16, y + pad), embed.get("title", ""), font=_font(15, bold=True), fill="#ffffff")
    top = y + pad + 26
    for i, field in enumerate(fields):
        fx, fy = x + 16 + (i % 3) * 140, top + (i // 3) * 42
        draw.text((fx, fy), field["name"], font=_font(13, bold=True), fill=TEXT)
        draw.text((fx, fy + 18), field["value"], font=_font(13), fill=TEXT)
    if "footer" in embed:
        draw.text((x + 16, top + rows * 42), embed["footer"]["text"], font=_font(12), fill=MUTED)
    return y + height


def _buttons(draw: ImageDraw.ImageDraw, rows: Sequence[Mapping[str, Any]], x: int, y: int) -> int:
    font = _font(14)
    for row in rows:
        bx = x
        for button in row["components"]:
            label = button.get("label", "")
            width = int(draw.textlength(label, font=font)) + 32
            draw.rounded_rectangle(
                (bx, y, bx + width, y + 32), 4, fill=BUTTONS.get(button["style"], BUTTONS[2])
            )
            draw.text((bx + width / 2, y + 16), label, font=font, fill="#ffffff", anchor="mm")
            bx += width + 8
        y += 40
    return y


def draw_message(message: Message, names: Mapping[int, str], scale: int = 2) -> Image.Image:
    """One result message as Discord's dark theme shows it (see the module doc); `names`:
    user ids to the names their mentions show; the attachment is shown `scale` times larger."""
    (attachment,) = message.attachments
    with Image.open(io.BytesIO(attachment.data)) as opened:
        picture = opened.convert("RGB")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (WIDTH, 2000), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x, y = 72, 16
    user = message.interaction.user.name if message.interaction else "someone"
    draw.text((x, y), f"{user} used ", font=_font(13), fill=MUTED)
    used = draw.textlength(f"{user} used ", font=_font(13))
    draw.text((x + used, y), "/imagine", font=_font(13), fill="#00a8fc")
    y += 24
    draw.ellipse((16, y, 56, y + 40), fill="#5865f2")
    draw.text((36, y + 20), "iB", font=_font(15, bold=True), fill="#ffffff", anchor="mm")
    draw.text((x, y), message.author.name, font=_font(16, bold=True), fill="#ffffff")
    badge = x + draw.textlength(message.author.name, font=_font(16, bold=True)) + 6
    draw.rounded_rectangle((badge, y + 2, badge + 34, y + 18), 3, fill="#5865f2")
    draw.text((badge + 17, y + 10), "APP", font=_font(10, bold=True), fill="#ffffff", anchor="mm")
    draw.text((badge + 42, y + 2), "Today at 14:32", font=_font(12), fill=MUTED)
    y += 24
    text = MENTION.sub(lambda m: "@" + names.get(int(m[1]), "user"), message.content)
    for line in _wrap(draw, text, _font(15), WIDTH - x - 16):
        for part in re.split(r"(@\w+)", line):
            if part.startswith("@"):
                box = draw.textbbox((x, y), part, font=_font(15))
                draw.rounded_rectangle(
                    (box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 3), 3, fill="#3c4270"
                )
                draw.text((x, y), part, font=_font(15), fill="#c9cdfb")
            else:
                draw.text((x, y), part, font=_font(15), fill=TEXT)
            x += int(draw.textlength(part, font=_font(15)))
        x, y = 72, y + 22
    y += 6
    canvas.paste(picture, (x, y))
    y += picture.height + 8
    for embed in message.embeds:
        y = _embed(draw, embed, x, y) + 8
    y = _buttons(draw, message.components, x, y)
    return canvas.crop((0, 0, WIDTH, y + 12))


async def _capture(out: Path) -> list[Path]:
    cache = default_cache_dir()
    builtin_folder("builtin:tiny", cache)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with open_world(Path(tmp), cache, users=("alice",)) as world:
            world.configure(engine={"default_size": 128})  # 64 by default: too small to see
            async with world.running_bot():
                names = {world.alice.id: "alice"}
                for count, name in ((4, "discord-grid.png"), (1, "discord-result.png")):
                    interaction = await world.server.invoke(
                        "imagine",
                        user=world.alice,
                        channel=world.art,
                        options={"prompt": PROMPT, "count": count, "seed": 7, "steps": 4},
                    )
                    message = await wait_result(interaction, within=600)
                    draw_message(message, names).save(out / name, optimize=True)
                    written.append(out / name)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testkit.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(_capture(args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
