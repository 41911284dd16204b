"""PNG output with generation parameters in the `parameters` text chunk.

The format is the one AUTOMATIC1111's web UI writes and most SD tools read (ComfyUI loaders,
Civitai, image browsers): the prompt, then `Negative prompt: ...`, then one line of
`Key: value` pairs. Anyone can drag a bot image into their own tool and reproduce it. A JPEG
carries the same text where A1111 puts it, in the EXIF `UserComment` (UTF-16, big-endian,
after an 8-byte `UNICODE` header).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import ExifTags, Image, PngImagePlugin

__all__ = [
    "Parameters",
    "encode_png",
    "encode_with_fields",
    "format_parameters",
    "parse_parameters",
    "png_to_jpeg",
    "read_parameters",
]

#: The character code header of an EXIF UserComment in Unicode (EXIF 2.3, section 4.6.5).
_UNICODE = b"UNICODE\0"


@dataclass(frozen=True, slots=True)
class Parameters:
    """Everything needed to reproduce one image."""

    prompt: str
    negative_prompt: str
    steps: int
    sampler: str
    cfg_scale: float
    seed: int
    width: int
    height: int
    model: str
    denoising_strength: float | None = None  # image-to-image
    extra: tuple[tuple[str, str], ...] = ()  # more "Key: value" fields, e.g. Hires upscale


def format_parameters(p: Parameters) -> str:
    """Render in A1111's layout; values containing a comma are quoted as it does."""
    fields = {
        "Steps": str(p.steps),
        "Sampler": p.sampler,
        "CFG scale": f"{p.cfg_scale:g}",
        "Seed": str(p.seed),
        "Size": f"{p.width}x{p.height}",
        "Model": p.model,
    }
    if p.denoising_strength is not None:
        fields["Denoising strength"] = f"{p.denoising_strength:g}"
    fields |= dict(p.extra)
    tail = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items())
    lines = [p.prompt]
    if p.negative_prompt:
        lines.append(f"Negative prompt: {p.negative_prompt}")
    lines.append(tail)
    return "\n".join(lines)


def _quote(value: str) -> str:
    if any(c in value for c in ',:"\n'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return value


_BASIC = frozenset({"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model"})
_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> Parameters:
    """Inverse of `format_parameters` (also reads other A1111-style writers' basic fields)."""
    lines = text.strip("\n").split("\n")
    tail = lines.pop() if lines else ""
    negative_lines: list[str] = []
    prompt_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].lstrip()
        target.append(line)
    fields: dict[str, str] = {}
    for m in _FIELD.finditer(tail):
        key, value = m.group(1).strip(), m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        fields[key] = value
    width, _, height = fields.get("Size", "0x0").partition("x")
    strength = fields.pop("Denoising strength", None)
    extra = tuple((k, v) for k, v in fields.items() if k not in _BASIC)
    return Parameters(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines),
        steps=int(fields.get("Steps", 0)),
        sampler=fields.get("Sampler", ""),
        cfg_scale=float(fields.get("CFG scale", 0)),
        seed=int(fields.get("Seed", 0)),
        width=int(width or 0),
        height=int(height or 0),
        model=fields.get("Model", ""),
        denoising_strength=None if strength is None else float(strength),
        extra=extra,
    )


def encode_png(image: Image.Image, params: Parameters) -> bytes:
    """PNG bytes with the parameters chunk; compress_level 6 balances size and encode time."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", format_parameters(params))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


def encode_with_fields(
    image: Image.Image, png: bytes, fields: tuple[tuple[str, str], ...]
) -> bytes:
    """`image` as a PNG carrying `png`'s parameters text as it is, with `fields` added to its
    last line (what a post-processing step adds, as ADetailer does)."""
    with Image.open(io.BytesIO(png)) as source:
        text = source.text.get("parameters", "") if hasattr(source, "text") else ""
    added = ", ".join(f"{key}: {_quote(value)}" for key, value in fields)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{text}, {added}" if text else added)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


def png_to_jpeg(png: bytes, quality: int = 95) -> bytes:
    """A PNG of ours as a JPEG, its parameters in the EXIF UserComment as A1111 writes them."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        text = im.text.get("parameters") if hasattr(im, "text") else None
        exif = Image.Exif()
        if text:
            comment = _UNICODE + text.encode("utf-16-be")
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def _user_comment(im: Image.Image) -> str | None:
    raw = im.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    header, body = raw[:8], raw[8:]
    if header == _UNICODE:  # A1111 writes big-endian; a byte order mark says otherwise
        return body.decode("utf-16" if body[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-16-be")
    return body.decode("utf-8", errors="replace")


def read_parameters(png: bytes) -> Parameters | None:
    """The parameters a PNG (or a JPEG or WebP, from its EXIF UserComment) carries, or None
    if it has none."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        text = im.text.get("parameters") if hasattr(im, "text") else None
        if not text and im.format in ("JPEG", "WEBP"):
            try:
                text = _user_comment(im)
            except (UnicodeDecodeError, ValueError, SyntaxError):
                text = None
    if not text:
        return None
    try:
        return parse_parameters(text.rstrip("\0"))
    except ValueError:  # another tool's text, not A1111's fields
        return None
