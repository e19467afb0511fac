"""The README's "Using it" section as the shell commands it shows, in order: what
`tests/integration/test_readme.py` runs, so the section cannot drift from the product."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def strip_comment(line: str) -> str:
    """The line without its shell comment: a `#` that starts a word, outside quotes."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def using_it(text: str) -> list[str]:
    """Every command of the section's ```sh blocks, continuation lines joined."""
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        pending = ""
        for raw in block.splitlines():
            line = strip_comment(raw)
            if pending:
                line = f"{pending} {line.strip()}"
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            pending = ""
            if line.strip():
                commands.append(line.strip())
    return commands
