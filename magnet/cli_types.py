"""argparse value types shared by ``magnet`` (magnet/cli.py) and ``python -m magnet.eval``: a
value that breaks the option's rule is an argparse error naming the option, before any work."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

SEED_LIMIT = 1 << 64  # seeds are 0 <= seed < 2**64 (the C core reads a uint64)


def option(parse: Callable[[str], Any], ok: Callable[[Any], bool], rule: str
           ) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, then require ``ok`` of the value (``rule`` says
    what is required; argparse puts the option's name in front of the error)."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {parse.__name__} value: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value!r}")
        return value
    return convert


count = option(int, lambda v: v >= 1, "an integer >= 1")
seed = option(int, lambda v: 0 <= v < SEED_LIMIT, "an integer in [0, 2**64)")


def output_path(text: str) -> str:
    """An output file or directory: not the empty string, which would pass for no path (nothing
    written, or the early writability check skipped and a failure after the work)."""
    if not text:
        raise argparse.ArgumentTypeError("must be a file path, got an empty string ''")
    return text
