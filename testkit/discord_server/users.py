"""Who acts in the world: users (people and bots) and the bot's application (its token)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class User:
    """A Discord user (a person or a bot)."""

    id: int
    name: str
    bot: bool = False
    global_name: str | None = None
    locale: str = "en-US"

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def __repr__(self) -> str:
        return f"User({self.name!r}, id={self.id}{', bot' if self.bot else ''})"


@dataclass(eq=False)
class Application:
    """The bot's application: its id, bot user and token (a wrong token gets 401)."""

    id: int
    name: str
    token: str
    bot: User
    owner: User
    flags: int = 0
    allowed_intents: int | None = None
    """Intent bits IDENTIFY may ask for; ``None`` allows all (else close 4014 like Discord)."""


__all__ = ["Application", "User"]
