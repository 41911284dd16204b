"""`python -m engine.cluster.child`: the bridge's child process (see `bridge.py`)."""

from engine.cluster.bridge import child_main

if __name__ == "__main__":
    child_main()
