"""Jobs: admission, the run of one job, and the service that keeps them (see `service.py`)."""

from .admission import Admission, Admitted
from .convert import Origin
from .run import JobRun
from .service import JobService

__all__ = ["Admission", "Admitted", "JobRun", "JobService", "Origin"]
