"""`JobRef`: how buttons, attachments and stored files name a job (see its docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from .jobs import JobRecord

__all__ = ["JobRef"]


@dataclass(frozen=True, slots=True)
class JobRef:
    """A job as a button or an attachment names it: its id and its random key.

    Ids start again after a database reset or an older backup's restore; the key does not,
    so a stale button can never name another job. `key` is None only for jobs (and buttons)
    from before keys existed.
    """

    id: int
    key: str | None = None

    @classmethod
    def of(cls, record: JobRecord) -> JobRef:
        return cls(record.id, record.key)

    def names(self, record: JobRecord | None) -> bool:
        return record is not None and (record.id, record.key) == (self.id, self.key)
