"""The README's commands, read as a user reads them: every train.py, sample.py and export.py
line in its bash blocks names files that exist and flags its script accepts, and following the
README top to bottom never starts a run over one an earlier command made. Nothing trains."""

import re
import shlex
from pathlib import Path

import pytest

from nanogpt.cli import export_parser, sample_parser
from nanogpt.config import parse_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train.py", "sample.py", "export.py")


def readme_commands() -> list[tuple[str, list[str], str]]:
    """(script, its arguments, the line with the comment it sits under) for each README line
    that runs one of SCRIPTS, directly or under torchrun, in README order."""
    commands = []
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        comment = ""
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip():
                comment = ""  # a blank line ends what a comment line speaks about
                continue
            if line.lstrip().startswith("#"):
                comment = line.strip()
                continue
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word in SCRIPTS:
                    commands.append((word, words[i + 1:], f"{comment} | {line.strip()}"))
                    break
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_this_test_reads():
    scripts = {script for script, _, _ in COMMANDS}
    assert scripts == set(SCRIPTS) and len(COMMANDS) >= 20


@pytest.mark.parametrize("script,args,line", COMMANDS, ids=[c[2][-60:] for c in COMMANDS])
def test_readme_command_parses(script, args, line, monkeypatch):
    monkeypatch.chdir(ROOT)  # the README runs from the clone's root
    if script == "train.py":
        parse_args(args)  # config files exist, every key is known and its value converts
    else:
        parser = sample_parser() if script == "sample.py" else export_parser()
        parser.allow_abbrev = False  # the README spells each flag in full
        parser.parse_args(args)


def test_following_the_readme_never_starts_a_run_over_an_earlier_one(monkeypatch):
    """A scratch run into an out_dir an earlier README command trained is refused: the user
    who follows the README line by line would meet that error. Exempt: runs for a GPU (the
    README offers them instead of the CPU ones, not after them) and a command shown again."""
    monkeypatch.chdir(ROOT)
    trained, seen = {}, set()
    for script, args, line in COMMANDS:
        if script != "train.py" or "GPU" in line:
            continue
        key = tuple(shlex.split(line.split(" | ", 1)[1], comments=True))  # the whole command
        if key in seen:
            continue
        seen.add(key)
        cfg = parse_args(args)
        if cfg.init_from == "resume" or cfg.overwrite:
            continue
        assert cfg.out_dir not in trained, (
            f"{line!r} trains into {cfg.out_dir}, which {trained[cfg.out_dir]!r} made")
        trained[cfg.out_dir] = line

