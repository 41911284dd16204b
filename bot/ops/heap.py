"""The process's heap and CPython's cyclic garbage collector, set for a bot that must answer
within milliseconds while a burst of commands makes objects by the hundred thousand.

`settle_heap()` runs once start-up is done:

- What start-up made (modules, the model's Python objects, the ledger's metadata: hundreds
  of thousands of objects that live as long as the process) is frozen out of the cyclic
  collector's reach. Each full collection walked them all, holding the GIL: a 300 ms stall
  of the event loop, every few seconds under a burst (issue 24's load benchmark: loop lag
  max 303 ms -> 6 ms, first answer p99 58 -> 8 ms at 200 /imagine over 10 s).
- The youngest generation is collected every 10,000 new objects instead of CPython's 700
  (`THRESHOLDS`; the older generations keep CPython's cadence). A burst's requests, tasks
  and messages live for tens of milliseconds to minutes: collected every 700 new objects,
  most were walked again and again before they died. This halves the collector's share of
  the event loop under a burst, though each young collection walks more at a time; the
  figures, and what it did not change, are in `docs/benchmarks.md` ("The bot under load").

Garbage made later is collected as before, only less often; frozen objects are still freed
when nothing refers to them.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "settle_heap"]

#: `gc.set_threshold`'s: objects made (less those freed) between two collections of the
#: youngest generation, then how many of those between two of the middle one, and how many
#: of those between two full ones (CPython's: 700, 10, 10).
THRESHOLDS = (10_000, 10, 10)


def settle_heap() -> int:
    """Freeze what exists now and collect young objects less often (see the module doc);
    the number of objects frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return gc.get_freeze_count()
