"""The configured models as every engine backend describes them, written once.

Both the local `Engine` and the Ray backend serve the models of one `EngineConfig`; what
follows from the config (the default model, the names, a request's model, its scheduler) and
from the models' descriptions (a model's profile) is derived here, so the two backends
cannot disagree on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import EngineConfig, LoraSpec
from .errors import InvalidRequest
from .profile import ModelProfile

__all__ = ["ModelCatalog", "ModelInfo"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One configured model as `/models` shows it."""

    profile: ModelProfile
    loaded: bool
    loading: bool
    memory_bytes: int
    loras: tuple[LoraSpec, ...]
    default: bool

    @property
    def name(self) -> str:
        return self.profile.name


class ModelCatalog:
    """What an engine backend knows of its models; a backend supplies `config`, `models()`
    (the models as it loaded them) and `profile_named` (one model's profile, cheaply: it is
    read for every request), the rest is derived."""

    config: EngineConfig

    def models(self) -> list[ModelInfo]:
        """Every configured model: its profile, whether it is loaded, its memory, its LoRAs."""
        raise NotImplementedError

    def profile_named(self, name: str) -> ModelProfile:
        """The profile of the configured model called `name`."""
        raise NotImplementedError

    @property
    def default_model(self) -> str:
        return self.config.default_model_name

    @property
    def model_names(self) -> list[str]:
        return self.config.model_names

    def profile_of(self, model: str | None) -> ModelProfile:
        """Model `model`'s profile (None: the default's); `InvalidRequest` for a name that
        is not configured."""
        return self.profile_named(self.config.model_named(model))

    @property
    def profile(self) -> ModelProfile:
        """The default model's profile."""
        return self.profile_of(None)

    def scheduler_of(self, model: str | None) -> str:
        """The configured scheduler of model `model` ("default": the model's own), as the
        ledger records it; "default" for a name that is not configured."""
        try:
            return self.config.model_spec(self.config.model_named(model)).scheduler
        except InvalidRequest:
            return "default"
