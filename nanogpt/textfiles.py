"""Your text, read in pieces: the files of an input and their UTF-8 text a few MB at a time.

A piece ends, where it can, at a line end between two visible characters (ASCII, or letters
or digits): just after the newline, or between the CR and LF of a Windows line end; never in
a blank line. No pre-token of a GPT-2-style BPE crosses that point, and none changes when a
piece ends there (a run of spaces at the end of a piece would), so encoding the pieces one
by one gives the same tokens as encoding the whole file; characters split anywhere. Text is
decoded as it is (no newline translation), so decoding the tokens gives back the exact bytes.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from nanogpt.errors import UserError

PIECE_BYTES = 1 << 22
"""Bytes read at a time; a piece holds about this much text (4 MB)."""
_VISIBLE = r"(?:[!-~]|\w)"  # a visible ASCII character, a letter or a digit
_CUT = re.compile(rf"(?<={_VISIBLE})(?:\n(?={_VISIBLE})|\r(?=\n{_VISIBLE}))")


def input_files(source: str | os.PathLike, skip: Callable[[Path], bool] | None = None
                ) -> list[Path]:
    """[source] for a file; every non-hidden file under a folder for which skip is not true,
    by sorted path."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(f for f in source.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(source).parts)
                       and not (skip and skip(f)))
        if not files:
            raise UserError(f"the folder {source} holds no files to read (hidden files and "
                            f"prepared datasets are skipped); pass a text file or a folder "
                            f"of text files")
        return files
    problem = "is not a regular file or a folder" if source.exists() else "does not exist"
    raise UserError(f"{source} {problem}; pass --input a UTF-8 text file, a folder of "
                    f"them, or an http(s) URL")


def read_pieces(path: Path) -> Iterator[tuple[str, int]]:
    """(text, bytes read so far) for consecutive pieces of path's UTF-8 text; UserError
    naming the byte offset of the first invalid byte."""
    piece_bytes = PIECE_BYTES
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry, offset = "", 0
    with open(path, "rb") as f:
        while True:
            block = f.read(piece_bytes)
            try:
                text = carry + decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                at = offset + e.start - len(decoder.getstate()[0])
                raise UserError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
                                f"offset {max(at, 0)}); convert it (e.g. iconv -f latin1 -t "
                                f"utf-8) or move it out of the input") from None
            offset += len(block)
            if not block:
                if text:
                    yield text, offset
                return
            cut = _last_cut(text, piece_bytes)
            if cut:
                yield text[:cut], offset
            carry = text[cut:]


def read_text(path: Path) -> str:
    """path's whole UTF-8 text; UserError naming the first invalid byte, as read_pieces."""
    return "".join(text for text, _ in read_pieces(path))


def split_text(text: str, size: int) -> Iterator[str]:
    """text in pieces of at most about size characters, cut as read_pieces cuts."""
    start = 0
    while len(text) - start > size:
        cut = _last_cut(text[start:start + size], size)
        yield text[start:start + cut]
        start += cut
    if start < len(text):
        yield text[start:]


def _last_cut(text: str, piece_bytes: int) -> int:
    """The last line end between visible characters in text (module docstring); else the end
    of text when it is longer than a piece (so memory stays bounded); else 0 (keep it)."""
    start = max(0, len(text) - (1 << 16))
    while True:
        match = None
        for match in _CUT.finditer(text, start):
            pass
        if match is not None:
            return match.end()
        if start == 0:
            return len(text) if len(text) >= piece_bytes else 0
        start = 0
