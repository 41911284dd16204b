"""Property-based: whatever a user types, validation returns a sane request or a clear
`InvalidRequest` — never another exception, never an out-of-range value reaching the engine."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ImageRequest, InvalidRequest
from engine.request import MAX_PROMPT_CHARS, MAX_SEED, validate

from .test_request import LIMITS, PROFILE, count_tokens

numbers = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from("\x00\u200b\u202e\u2066@#*_~`|\n\t <>"), max_size=50),
    st.just("@everyone <@&123> **bold** ||spoiler||"),
    st.builds(lambda n: "x" * n, st.integers(0, 12_000)),
)


@settings(max_examples=300, deadline=None)
@given(
    prompt=texts,
    negative=texts,
    seed=numbers,
    steps=numbers,
    guidance=numbers,
    width=numbers,
    height=numbers,
    count=numbers,
)
def test_validation_accepts_sane_requests_or_explains(
    prompt: str,
    negative: str,
    seed: object,
    steps: object,
    guidance: object,
    width: object,
    height: object,
    count: object,
) -> None:
    request = ImageRequest(
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=steps,  # type: ignore[arg-type]
        guidance=guidance,
        width=width,
        height=height,
        count=count,
        user="u",  # type: ignore[arg-type]
    )
    try:
        resolved, warnings = validate(request, LIMITS, PROFILE, count_tokens)
    except InvalidRequest as exc:
        assert exc.field in {
            "prompt",
            "negative_prompt",
            "seed",
            "steps",
            "guidance",
            "width",
            "height",
            "count",
        }
        assert str(exc).endswith(".")
        return
    assert resolved.prompt and len(resolved.prompt) <= MAX_PROMPT_CHARS
    for text in (resolved.prompt, resolved.negative_prompt):
        assert not any(unicodedata.category(c) in {"Cc", "Cf"} for c in text)
    assert 0 <= resolved.seed <= MAX_SEED  # type: ignore[operator]
    assert 1 <= resolved.steps <= LIMITS.max_steps  # type: ignore[operator]
    assert 1 <= resolved.count <= LIMITS.max_count
    assert 0 <= resolved.guidance <= LIMITS.max_guidance  # type: ignore[operator]
    assert resolved.width % 8 == 0 and resolved.height % 8 == 0  # type: ignore[operator]
    assert all(isinstance(w, str) for w in warnings)
