#!/usr/bin/env python3
"""Print the set-up commands of README.md's "Two commands" section, one per line.

`.ci/fresh-root.sh` runs what this prints, and tests/test_packaging.py checks it, so that
the commands a new user copies are the very ones that are proved to work.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands(text: str) -> list[str]:
    """The lines of the first ```sh block after the "## Two commands" heading."""
    section = text.split("\n## Two commands\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    if block is None:
        raise ValueError("README.md: no ```sh block under '## Two commands'")
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


if __name__ == "__main__":
    print("\n".join(readme_commands(README.read_text())))
    sys.exit(0)
