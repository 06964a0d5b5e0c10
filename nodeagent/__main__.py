"""``python -m nodeagent``: the same entry point as the ``nodeagent`` console script."""

from nodeagent.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
