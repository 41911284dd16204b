"""`[ray]`: where the cluster is and how the engine's replicas are placed on it. Pure."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RayConfig"]


@dataclass(frozen=True, slots=True)
class RayConfig:
    """How `RayEngine` reaches its cluster and sizes its Serve deployment.

    `address`: "local" starts a private Ray cluster inside the bot's process (one machine),
    "auto" joins the cluster this machine belongs to (`ray start` ran here), and
    "ray://host:10001" reaches one through Ray Client. `replicas` is a fixed count; with
    `max_replicas` above 0, Serve autoscales between `min_replicas` and `max_replicas` on
    the requests each replica holds. `num_gpus` unset asks for what `[engine] device` needs
    (`gpus_per_replica`); set, it is asked for as given (0.5: two replicas share a GPU).
    """

    address: str = "local"
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 0  # 0: a fixed `replicas`; more: autoscaling up to this many
    num_gpus: float | None = None  # per replica; unset: what [engine] device needs
    num_cpus: float = 1.0
    app: str = "imagine-bot"  # the Serve application's name (several bots can share one)
    start_timeout_s: float = 600.0  # replicas placed and their models loaded
    outage_s: float = 600.0  # how long accepted jobs wait for a lost cluster to come back

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Human-readable reasons this section cannot work, empty when it is fine."""
        out: list[str] = []
        if not self.address.strip():
            out.append('address must be "local", "auto" or ray://host:port')
        if self.replicas < 1:
            out.append("replicas must be at least 1")
        if self.max_replicas and not 1 <= self.min_replicas <= self.max_replicas:
            out.append("min_replicas must be between 1 and max_replicas")
        if (self.num_gpus or 0) < 0 or self.num_cpus < 0:
            out.append("num_gpus and num_cpus must not be negative")
        if not self.app.strip() or "#" in self.app:
            out.append("app must be a name without #")
        if self.start_timeout_s <= 0 or self.outage_s < 0:
            out.append("start_timeout_s must be positive and outage_s not negative")
        return out

    def gpus_per_replica(self, device: str, cluster_gpus: float) -> float:
        """The GPUs each replica asks Serve for: `num_gpus` when set; else none for a CPU
        (or Apple "mps", which Ray does not count as a GPU), one for "cuda", and for "auto"
        one only where the cluster has GPUs (`cluster_gpus`, Ray's count), else none: a
        replica that asks for a GPU no node has is never placed."""
        if self.num_gpus is not None:
            return self.num_gpus
        if device.startswith("cuda"):
            return 1.0
        if device == "auto" and cluster_gpus > 0:
            return 1.0
        return 0.0

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > 0

    @property
    def most_replicas(self) -> int:
        """The most replicas the deployment may run."""
        return self.max_replicas if self.autoscaling else self.replicas
