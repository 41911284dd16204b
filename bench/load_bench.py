"""`python -m bench.load_bench`: the load benchmark's command (it lives in `bench.load`)."""

from __future__ import annotations

from .load.main import main

if __name__ == "__main__":
    main()
