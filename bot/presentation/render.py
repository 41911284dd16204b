"""Text and embeds users see. Pure formatting: no Discord calls, no database.

The result embed carries everything needed to make the image again (prompt, negative, seed,
steps, guidance, size, model, sampler): the same values the PNG's `parameters` chunk holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import discord

from engine import GenerationResult, JobState, ModelInfo, Progress

from ..ledger import JobRecord, QuotaChange, UsageSummary, UserStatus
from ..moderation.rules import Verdict

__all__ = [
    "BAR_WIDTH",
    "info_text",
    "progress_text",
    "quota_change_text",
    "result_content",
    "result_embed",
    "usage_embed",
]

BAR_WIDTH = 12
EMBED_COLOUR = discord.Colour.blurple()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(moment: datetime | None) -> str:
    return discord.utils.format_dt(moment, "R") if moment else "now"


def progress_text(job_id: int, progress: Progress, *, resumed: bool = False) -> str:
    """One line for the requester's progress message."""
    lead = "Resumed after a restart. " if resumed else ""
    if progress.state is JobState.QUEUED:
        if progress.loading:
            place = f" (position {progress.position})" if progress.position else ""
            return f"{lead}Job #{job_id} is queued{place}: loading model {progress.loading}…"
        if progress.position:
            ahead = progress.position - 1
            line = "next in line" if ahead == 0 else f"{ahead} job(s) ahead"
            return f"{lead}Job #{job_id} is queued: position {progress.position} ({line})."
        return f"{lead}Job #{job_id} is queued."
    if progress.state is JobState.RUNNING:
        total = progress.total_steps or 1
        filled = round(BAR_WIDTH * progress.step / total)
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        return f"{lead}Job #{job_id} is being made: step {progress.step}/{total} `{bar}`"
    return f"Job #{job_id} is finishing."


def result_content(
    user_id: int,
    posted: int,
    withheld: int,
    warnings: tuple[str, ...] = (),
    failed: int = 0,
) -> str:
    """The result message's text: who it is for, and what was not posted and given back
    (`withheld` by moderation, `failed`: came out blank, NaN)."""
    ready = "your image is ready" if posted == 1 else "your images are ready"
    lines = [f"<@{user_id}>, {ready}."]
    if withheld:
        lines.append(
            f"{withheld} image(s) were flagged by the safety checker and are not posted here "
            "(this channel is not NSFW); they were given back to your quota."
        )
    if failed:
        lines.append(
            f"{failed} image(s) came out blank (their numbers overflowed) and are not posted; "
            "they were given back to your quota."
        )
    lines += [f"Note: {w}" for w in warnings]
    return _cut("\n".join(lines), 2000)


def result_embed(job: JobRecord, result: GenerationResult, verdict: Verdict) -> discord.Embed:
    request = result.request
    embed = discord.Embed(
        title=_cut(request.prompt, 256),
        colour=EMBED_COLOUR,
    )
    seeds = ", ".join(str(image.seed) for image, _ in verdict.post)
    embed.add_field(name="Seed" if len(verdict.post) == 1 else "Seeds", value=seeds)
    embed.add_field(name="Steps", value=str(request.steps))
    embed.add_field(name="Guidance", value=f"{request.guidance:g}")
    embed.add_field(name="Size", value=f"{request.width}x{request.height}")
    embed.add_field(name="Model", value=_cut(result.model, 1024))
    embed.add_field(name="Sampler", value=_cut(result.sampler, 1024))
    if request.loras:
        loras = ", ".join(f"{name} {weight:g}" for name, weight in request.loras)
        embed.add_field(name="LoRAs", value=_cut(loras, 1024))
    if request.negative_prompt:
        embed.add_field(name="Negative", value=_cut(request.negative_prompt, 1024), inline=False)
    spoilers = sum(1 for _, spoiler in verdict.post if spoiler)
    footer = f"Job #{job.id} · {result.run_s:.1f} s"
    asked = job.request
    if asked.reroll_of is not None:
        footer += f" · reroll of #{asked.reroll_of}"
    if asked.source_job_id is not None and asked.source_index is not None:
        what = "upscale" if asked.kind == "upscale" else "variation"
        footer += f" · {what} of #{asked.source_job_id} image {asked.source_index + 1}"
    if asked.strength is not None:
        footer += f" · strength {asked.strength:g}"
    if spoilers:
        footer += f" · {spoilers} flagged image(s) hidden as spoilers"
    embed.set_footer(text=footer)
    return embed


def models_text(models: Sequence[ModelInfo]) -> str:
    """`/models`: each model with its description, defaults, state and fitting LoRAs."""
    lines = []
    for info in models:
        profile = info.profile
        state = "loading" if info.loading else "loaded" if info.loaded else "not loaded"
        if info.loaded and info.memory_bytes:
            mib = info.memory_bytes / 2**20
            state += f" ({mib / 1024:.1f} GiB)" if mib >= 1024 else f" ({mib:.0f} MiB)"
        head = f"**{profile.name}**" + (" (default)" if info.default else "") + f" · {state}"
        lines.append(head)
        if profile.description:
            lines.append(f"  {profile.description}")
        size = profile.native_size
        lines.append(
            f"  {profile.family_label or profile.family} · "
            f"{profile.default_steps} steps · guidance {profile.default_guidance:g} · "
            f"{size}x{size} · {profile.sampler}"
        )
        reads = [
            "negative prompt" if profile.negative_prompt else "no negative prompt",
            "starts from pictures" if profile.img2img else "text only",
        ]
        if not profile.weighted:
            reads.append("no prompt weights")
        if profile.cache != "off":  # its step cache: faster, slightly different images
            reads.append("every image fast" if profile.cache_all else "quality:fast")
        lines.append(f"  {' · '.join(reads)}")
        if info.loras:
            tags = ", ".join(f"`<lora:{lora.name}:{lora.weight:g}>`" for lora in info.loras)
            lines.append(f"  LoRAs: {tags}")
    lines.append("Choose one with `/imagine model:`; add a LoRA by writing its tag in the prompt.")
    return _cut("\n".join(lines), 2000)


def info_text(status: UserStatus, *, mention: str | None = None) -> str:
    """A user's standing: allowance, refill time, jobs in flight (`mention`: not the reader)."""
    who, has = ("You", "have") if mention is None else (mention, "has")
    lines: list[str] = []
    if status.blocked:
        lines.append(f"{who} may not make images here (blocked by a moderator).")
    elif status.unlimited:
        lines.append(f"{who} {has} no image limit here ({status.used} made in the last 24 h).")
    else:
        lines.append(
            f"{who} {has} **{status.remaining}** of {status.limit} images left "
            f"(rolling 24 hours, {status.used} used)."
        )
        if status.refills_at is not None:
            lines.append(f"More images become available {_when(status.refills_at)}.")
    lines.append(f"Jobs queued: {status.queued}, running: {status.running}.")
    lines.append(f"Setting: {status.setting}.")
    return "\n".join(lines)


def quota_change_text(change: QuotaChange) -> str:
    return (
        f"<@{change.user_id}>'s allowance changed from {change.old} to {change.new} "
        f"(audit entry #{change.id})."
    )


def usage_embed(summary: UsageSummary, days: int) -> discord.Embed:
    embed = discord.Embed(
        title=f"Usage over the last {days} day(s)",
        description=(
            f"{summary.total_images} images in {summary.total_jobs} jobs; "
            f"{summary.total_refusals} refusals."
        ),
        colour=EMBED_COLOUR,
    )
    top = summary.top_users(10)
    embed.add_field(
        name="Top users",
        value="\n".join(f"<@{u.user_id}>: {u.images} images ({u.jobs} jobs)" for u in top)
        or "nobody yet",
        inline=False,
    )
    embed.add_field(
        name="By kind",
        value="\n".join(f"{k.kind}: {k.images} images ({k.jobs} jobs)" for k in summary.kinds)
        or "nothing yet",
        inline=False,
    )
    embed.add_field(
        name="Refusals",
        value="\n".join(f"{r.reason}: {r.count}" for r in summary.refusals) or "none",
        inline=False,
    )
    embed.set_image(url="attachment://usage.png")
    return embed
