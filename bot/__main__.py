"""`python -m bot` is the same as the `imagine-bot` command."""

import sys

from .cli import main

__all__: list[str] = []

sys.exit(main())
