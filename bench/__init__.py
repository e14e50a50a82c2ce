"""flowrelay's benchmark: the in-process floor, the original design, and flowrelay itself.

Run it with ``make bench`` (or ``.venv/bin/python -m bench [--quick]``) from the repo root.
It is never part of the test suite. See ``bench/README.md`` for what each figure means.
"""
