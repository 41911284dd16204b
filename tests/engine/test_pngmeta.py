"""PNG `parameters` chunk: written in the format other SD tools read, and read back."""

from __future__ import annotations

import dataclasses

from PIL import Image

from engine import Parameters, format_parameters, parse_parameters, read_parameters
from engine.pngmeta import encode_png

PARAMS = Parameters(
    prompt='a "robot", painting: water colours\nsecond line ☕',
    negative_prompt="blurry, low quality",
    steps=20,
    sampler="Euler a",
    cfg_scale=7.5,
    seed=4294967295,
    width=512,
    height=768,
    model="stabilityai/sd-turbo",
)


def test_format_matches_the_a1111_layout() -> None:
    text = format_parameters(PARAMS)
    lines = text.split("\n")
    assert lines[-2] == "Negative prompt: blurry, low quality"
    assert lines[-1] == (
        "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 4294967295, Size: 512x768, "
        "Model: stabilityai/sd-turbo"
    )


def test_round_trip_through_a_png_file() -> None:
    png = encode_png(Image.new("RGB", (8, 8), "red"), PARAMS)
    assert png.startswith(b"\x89PNG")
    assert read_parameters(png) == PARAMS


def test_parses_a_real_a1111_string_with_extra_fields() -> None:
    text = (
        "masterpiece, a cat\nNegative prompt: ugly\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 12, Size: 768x512, "
        'Model hash: abc, Model: "sd, v1.5", Lora hashes: "x: 1, y: 2"'
    )
    p = parse_parameters(text)
    assert (p.prompt, p.negative_prompt, p.steps, p.seed) == ("masterpiece, a cat", "ugly", 30, 12)
    assert (p.width, p.height, p.model, p.sampler) == (768, 512, "sd, v1.5", "DPM++ 2M Karras")


def test_an_image_without_parameters_reads_as_none() -> None:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    assert read_parameters(buf.getvalue()) is None


def test_image_to_image_fields_round_trip() -> None:
    """Denoising strength and the upscale's own fields, as A1111 writes them for hires fix."""
    extra = (("Hires upscale", "2"), ("Source", "job 12, image 2"))
    params = dataclasses.replace(PARAMS, denoising_strength=0.35, extra=extra)
    text = format_parameters(params)
    assert text.endswith('Denoising strength: 0.35, Hires upscale: 2, Source: "job 12, image 2"')
    assert parse_parameters(text) == params
    assert read_parameters(encode_png(Image.new("RGB", (8, 8)), params)) == params
