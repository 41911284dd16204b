"""The simulated users: seeded `/imagine` and `/info` arrivals, Cancel and Reroll presses,
and what the Discord test server shows of each job (its id, its result, whether it ended).

Results are recognised by the bot's own attachment names (`bot.jobs.delivery.result_job`)
and buttons by their custom ids (`testkit.jobs.JOB_ID`, actions from `bot.services.Action`);
the two texts read here (`Job #N`, and how a job that ended without images says so) are what
a member reads on the progress message.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.jobs.delivery import result_job
from bot.services import Action
from bot.timing.limits import ANSWER_DEADLINE
from testkit.discord_server import Channel, DiscordTestServer, Interaction, Message, User
from testkit.jobs import JOB_ID, button_id

__all__ = ["JobAsk", "Load", "failed_interaction", "has_button"]

#: The job id on a progress message without buttons (the bot's words,
#: `bot/presentation/render.py`).
JOB_TEXT = re.compile(r"Job #(\d+)")
#: A progress message saying its job ended without images (`bot/jobs/run.py`).
ENDED_TEXT = re.compile(r"was cancelled|failed|flagged")
#: How long the bot may log deliveries that no channel shows before the load gives up.
BLIND_AFTER = 30.0


def failed_interaction(interaction: Interaction, grace: float = 10.0) -> bool:
    """Never acknowledged in time: Discord shows the user "This interaction failed"."""
    if interaction.acknowledged:
        return False
    return bool(interaction.callbacks) or interaction.age > ANSWER_DEADLINE + grace


def has_button(message: Message, action: Action) -> bool:
    """Whether `message` carries a job button for `action`."""
    return any(
        (found := JOB_ID.fullmatch(custom_id)) is not None and found["action"] == action
        for custom_id in message.custom_ids
    )


@dataclass(eq=False)
class JobAsk:
    """One request for images: an `/imagine` or a Reroll press."""

    interaction: Interaction
    user: User
    kind: str  # "imagine" or "reroll"
    cancel_after: float | None = None  # press Cancel this long after the progress shows
    reroll_after: float | None = None  # press Reroll this long after the result shows
    job_id: int | None = None
    button_planned: bool = False

    @property
    def presses(self) -> bool:
        """Whether a button press is planned for this request."""
        return self.cancel_after is not None or self.reroll_after is not None


@dataclass
class Load:
    """The users' side of one run; `logged_deliveries` counts the deliveries the bot logged
    (a load that sees none of them gives up early instead of waiting for its timeout)."""

    server: DiscordTestServer
    args: argparse.Namespace
    channels: list[Channel]
    users: list[User]
    rng: random.Random
    logged_deliveries: Callable[[], int] = lambda: 0
    asks: list[JobAsk] = field(default_factory=list)
    clicks: list[tuple[str, Interaction]] = field(default_factory=list)  # (button, interaction)
    infos: list[Interaction] = field(default_factory=list)
    pending_clicks: int = 0
    skipped_clicks: collections.Counter[str] = field(default_factory=collections.Counter)
    cancel_acked: set[int] = field(default_factory=set)
    cancel_answered: set[int] = field(default_factory=set)
    started_wall: float = 0.0
    sent_all_wall: float = 0.0
    # Message id -> (its attachment count, the jobs they name): `deliveries` runs every 0.2 s
    # on the test server's loop, and must not delay what the server records.
    _seen: dict[int, tuple[int, set[int]]] = field(default_factory=dict)

    def channel_of(self, index: int) -> Channel:
        return self.channels[index % len(self.channels)]

    # -- reading the server's state --------------------------------------------------------

    def deliveries(self) -> dict[int, list[Message]]:
        """Public messages with result images, by job id (deleted ones too)."""
        found: dict[int, list[Message]] = collections.defaultdict(list)
        for channel in self.channels:
            for message in self.server.messages_in(channel, include_deleted=True):
                if message.ephemeral or not message.attachments:
                    continue
                count = len(message.attachments)
                seen = self._seen.get(message.id)
                if seen is None or seen[0] != count:
                    jobs = {j.id for a in message.attachments if (j := result_job(a.filename))}
                    seen = self._seen[message.id] = (count, jobs)
                for job_id in seen[1]:
                    found[job_id].append(message)
        return found

    @staticmethod
    def job_id_of(ask: JobAsk) -> int | None:
        if ask.job_id is None:
            for message in ask.interaction.messages:
                for custom_id in message.custom_ids:
                    if found := JOB_ID.fullmatch(custom_id):
                        ask.job_id = int(found["job"])
                        return ask.job_id
                if found := JOB_TEXT.search(message.content):
                    ask.job_id = int(found.group(1))
                    return ask.job_id
        return ask.job_id

    def settled(self, ask: JobAsk, delivered: dict[int, list[Message]]) -> bool:
        job_id = self.job_id_of(ask)
        original = ask.interaction.original
        if job_id is None:  # refused (or failed) before a job existed: a private answer
            if original is not None and not original.loading and not original.custom_ids:
                return True
            return failed_interaction(ask.interaction)
        if job_id in delivered or job_id in self.cancel_answered:
            return True  # cancelled jobs end in the ledger; their last edit may wait long
        return original is not None and bool(ENDED_TEXT.search(original.content))

    def finished(self, delivered: dict[int, list[Message]]) -> bool:
        """Every press made and every request settled."""
        return (
            self.pending_clicks == 0
            and all(ask.button_planned or not ask.presses for ask in self.asks)
            and all(self.settled(ask, delivered) for ask in self.asks)
        )

    # -- driving ---------------------------------------------------------------------------

    async def imagine(self, index: int) -> None:
        user = self.users[index]
        options = {"prompt": f"load test {index}", "seed": index, "steps": self.args.steps}
        interaction = await self.server.invoke(
            "imagine", user=user, channel=self.channel_of(index), options=options
        )
        ask = JobAsk(interaction, user, "imagine")
        roll = self.rng.random()
        if roll < self.args.cancel_share:
            ask.cancel_after = self.rng.uniform(0.2, 3.0)
        elif roll < self.args.cancel_share + self.args.reroll_share:
            ask.reroll_after = self.rng.uniform(0.2, 2.0)
        self.asks.append(ask)

    async def info(self, index: int) -> None:
        interaction = await self.server.invoke(
            "info", user=self.users[index], channel=self.channel_of(index)
        )
        self.infos.append(interaction)

    def plan_buttons(self, delivered: dict[int, list[Message]]) -> None:
        """Schedule Cancel on progress messages and Reroll on results once they show."""
        loop = asyncio.get_running_loop()
        for ask in self.asks:
            if ask.button_planned or not ask.presses:
                continue
            job_id = self.job_id_of(ask)
            if job_id is None:
                if self.settled(ask, delivered):  # refused: nothing to press
                    ask.button_planned = True
                continue
            if ask.cancel_after is not None:
                progress = ask.interaction.original
                if progress is not None and has_button(progress, Action.CANCEL):
                    custom_id = button_id(progress, Action.CANCEL)
                    ask.button_planned = True
                    self._later(loop, ask.cancel_after, Action.CANCEL, progress, custom_id, ask)
            elif job_id in delivered:
                ask.button_planned = True
                message = delivered[job_id][0]
                custom_id = button_id(message, Action.REROLL)
                delay = ask.reroll_after or 0.0
                self._later(loop, delay, Action.REROLL, message, custom_id, ask)

    def _later(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        button: str,
        message: Message,
        custom_id: str,
        ask: JobAsk,
    ) -> None:
        self.pending_clicks += 1

        def fire() -> None:
            loop.create_task(self._click(button, message, custom_id, ask))

        loop.call_later(delay, fire)

    async def _click(self, button: str, message: Message, custom_id: str, ask: JobAsk) -> None:
        try:
            if message.deleted or custom_id not in message.custom_ids:
                self.skipped_clicks[f"{button} (already finished)"] += 1
                return
            interaction = await self.server.click(message, custom_id, user=ask.user)
            self.clicks.append((button, interaction))
            if button == Action.REROLL:
                self.asks.append(JobAsk(interaction, ask.user, "reroll"))
            else:
                assert ask.job_id is not None
                callback = await interaction.wait_for_response(timeout=30)
                content = (callback.data or {}).get("content") or ""
                if callback.accepted and "Cancelling" in content:
                    self.cancel_acked.add(ask.job_id)
                self.cancel_answered.add(ask.job_id)
        finally:
            self.pending_clicks -= 1

    def schedule(self) -> list[tuple[float, str, int]]:
        """Seeded arrival times: one `/imagine` per user, `/info` for a share of them."""
        args, n = self.args, len(self.users)
        times = sorted(self.rng.uniform(0, args.duration) for _ in range(n))
        events: list[tuple[float, str, int]] = [(at, "imagine", i) for i, at in enumerate(times)]
        for i in self.rng.sample(range(n), round(n * args.info_share)):
            events.append((self.rng.uniform(0, args.duration), "info", i))
        return sorted(events)

    async def run(self) -> None:
        """Send every command at its seeded time, press buttons, until all jobs ended (or
        the bot logs deliveries that no channel shows: then nothing would ever settle)."""
        events = self.schedule()
        start = time.perf_counter()
        self.started_wall = time.time()
        deadline = start + self.args.timeout
        sender = asyncio.create_task(self._send(events, start))
        blind_since: float | None = None
        try:
            while time.perf_counter() < deadline:
                await asyncio.sleep(0.2)
                delivered = self.deliveries()
                self.plan_buttons(delivered)
                if sender.done() and self.finished(delivered):
                    return
                if delivered or not self.logged_deliveries():
                    continue
                blind_since = blind_since or time.perf_counter()
                if time.perf_counter() - blind_since > BLIND_AFTER:
                    print(
                        "load: the bot logs deliveries, but no result shows; stopping", flush=True
                    )
                    return
            print(f"load: gave up after {self.args.timeout:g} s with jobs still open", flush=True)
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def send_all(self) -> None:
        """Send every command at its seeded time and return (no buttons, no waiting for the
        jobs): the burst a `--stop-after` run stops the bot under."""
        start = time.perf_counter()
        self.started_wall = time.time()
        await self._send(self.schedule(), start)

    async def _send(self, events: list[tuple[float, str, int]], start: float) -> None:
        for at, kind, index in events:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the seeded schedule, not a wait for an event
            if kind == "imagine":
                await self.imagine(index)
            else:
                await self.info(index)
        self.sent_all_wall = time.time()
