"""Jobs: a job from admission to delivery (see `service.py`).

- `service.py`: `JobService`, the registry of this process's runs, admission of new jobs,
  and shutdown;
- `actions.py`: `Actions`, what `/imagine` and the job buttons ask (`services.JobActions`);
- `recovery.py`: `recover`, the jobs a previous process left unfinished, run again;
- `admission.py`, `convert.py`, `pricing.py`: whether a request runs, its shapes, its price;
- `run.py`, `targets.py`, `delivery.py`: the run of one job, where its messages go, and its
  result posted exactly once.

The Discord surface never imports this package: it calls `JobActions`.
"""

from .actions import Actions
from .admission import Admission, Admitted
from .convert import Origin
from .recovery import recover
from .run import JobRun
from .service import JobService

__all__ = ["Actions", "Admission", "Admitted", "JobRun", "JobService", "Origin", "recover"]
