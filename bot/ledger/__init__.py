"""The usage ledger: jobs, quotas and their audit log (SQLAlchemy 2 async + Alembic).

Cogs use `Ledger` (from `open_ledger`) and the frozen dataclasses it returns; they never
write SQL. `Ledger` is a facade: `store.py` lists the module that owns each group of writes.
Nothing here imports discord, and the engine never imports this package.
"""

from .database import (
    DEFAULT_DATABASE_URL,
    alembic_config,
    create_engine,
    database_url,
    make_sessionmaker,
    safe_url,
    schema_status,
    upgrade_to_head,
)
from .errors import (
    DatabaseGone,
    DatabaseUnavailable,
    LedgerBusyError,
    LedgerError,
    SchemaTooNew,
)
from .identity import (
    DatabaseMarker,
    DatabaseMismatch,
    DatabaseState,
    MarkerUnwritable,
    inspect_database,
)
from .jobref import JobRef
from .jobs import (
    ACTIVE_STATUSES,
    COUNTED_STATUSES,
    TERMINAL_STATUSES,
    JobKind,
    JobRecord,
    JobRequest,
    JobStatus,
    RefusalReason,
)
from .lease import LayoutMismatch, LeaseHeld, LeaseHolder, LeaseKeeper
from .quota import (
    WINDOW,
    QuotaChange,
    QuotaKind,
    QuotaPolicy,
    QuotaSetting,
    Reservation,
    UserStatus,
)
from .recovery import RecoveryPlan, TokenCheck, classify, give_up, plan_recovery
from .settings import FLAGGED_POLICIES, SETTINGS, GuildSettings, SettingsChange, parse_setting
from .shards import Shards
from .store import Ledger, RetryPolicy, open_ledger, utcnow
from .usage import DayUsage, KindUsage, RefusalCount, UsageSummary, UserDayUsage, UserUsage

__all__ = [
    "ACTIVE_STATUSES",
    "COUNTED_STATUSES",
    "DEFAULT_DATABASE_URL",
    "FLAGGED_POLICIES",
    "SETTINGS",
    "TERMINAL_STATUSES",
    "WINDOW",
    "DatabaseGone",
    "DatabaseMarker",
    "DatabaseMismatch",
    "DatabaseState",
    "DatabaseUnavailable",
    "DayUsage",
    "GuildSettings",
    "JobKind",
    "JobRecord",
    "JobRef",
    "JobRequest",
    "JobStatus",
    "KindUsage",
    "LayoutMismatch",
    "LeaseHeld",
    "LeaseHolder",
    "LeaseKeeper",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "MarkerUnwritable",
    "QuotaChange",
    "QuotaKind",
    "QuotaPolicy",
    "QuotaSetting",
    "RecoveryPlan",
    "RefusalCount",
    "RefusalReason",
    "Reservation",
    "RetryPolicy",
    "SchemaTooNew",
    "SettingsChange",
    "Shards",
    "TokenCheck",
    "UsageSummary",
    "UserDayUsage",
    "UserStatus",
    "UserUsage",
    "alembic_config",
    "classify",
    "create_engine",
    "database_url",
    "give_up",
    "inspect_database",
    "make_sessionmaker",
    "open_ledger",
    "parse_setting",
    "plan_recovery",
    "safe_url",
    "schema_status",
    "upgrade_to_head",
    "utcnow",
]
