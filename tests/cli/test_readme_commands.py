"""The README's "Using it" section read as commands: comments dropped, continuations joined."""

from __future__ import annotations

from tests.readme_commands import README, strip_comment, using_it


def test_comments_are_dropped_but_not_a_hash_inside_quotes_or_a_word() -> None:
    assert strip_comment("gpupool x  # a note") == "gpupool x"
    assert strip_comment("# only a note") == ""
    assert strip_comment("echo 'a # b' c#d") == "echo 'a # b' c#d"


def test_the_section_is_read_as_whole_commands_in_order() -> None:
    text = (
        "# t\n\n## Using it\n\n```sh\n# c\na \\\n    --b  # x\nexport K=v\n```\n\n"
        "## Next\n```sh\nz\n```\n"
    )
    assert using_it(text) == ["a --b", "export K=v"]
    commands = using_it(README.read_text())
    assert commands[0].startswith("gpupool coordinator serve")
    assert all(not c.endswith("\\\\") and "  #" not in c for c in commands)
