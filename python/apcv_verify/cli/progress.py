"""Progress bars of the long-running commands (``scan``, ``corpus``), with tqdm, on stderr.

Shown when asked (``--progress``), never with ``--no-progress``, and by default when stderr
is a terminal and the run has at least :data:`AUTO_THRESHOLD` steps: a short run or a pipe
gets no bar, so the output that scripts read stays clean.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Final, Never

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["AUTO_THRESHOLD", "add_progress_flag", "progress_bar"]

#: Steps from which a bar is shown by default (on a terminal).
AUTO_THRESHOLD: Final = 50


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bar on stderr (default: on a terminal, from {AUTO_THRESHOLD} items)",
    )


def progress_bar(total: int, description: str, shown: bool | None) -> tqdm[Never]:
    """A bar of ``total`` steps; ``shown`` None: on a terminal from :data:`AUTO_THRESHOLD`."""
    from tqdm import tqdm  # imported by the commands that show one, not to serve

    if shown is None:
        shown = sys.stderr.isatty() and total >= AUTO_THRESHOLD
    return tqdm(
        total=total,
        desc=description,
        unit="scan",
        disable=not shown,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.2,
    )
