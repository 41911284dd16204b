"""`python -m bench.load`: one load run (see `bench.load`)."""

from .main import main

main()
