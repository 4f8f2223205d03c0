"""Files the project knows by content: the copies shipped in nanogpt/assets, and downloads.

Tiny Shakespeare and GPT-2's BPE files ship with the package (see nanogpt/assets/README.md),
so the quick start, GPT-2 tokenization and the tests work offline. Everything else is
downloaded when asked for; a file whose content is known is checked against its sha256.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nanogpt.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class KnownFile:
    name: str
    """Path under nanogpt/assets/ of the shipped copy."""
    url: str
    """Where the file comes from (downloaded when the shipped copy is missing)."""
    sha256: str


TINY_SHAKESPEARE = KnownFile(
    "tinyshakespeare/input.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
GPT2_VOCAB_BPE = KnownFile(
    "gpt2/vocab.bpe", "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")
GPT2_ENCODER_JSON = KnownFile(
    "gpt2/encoder.json",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def known_file(known: KnownFile, dest: str | os.PathLike | None = None) -> Path:
    """The shipped copy of known when it is intact; else dest (downloaded, checked, if it is
    not there yet). UserError when neither can be had."""
    shipped = ASSETS / known.name
    if shipped.is_file() and sha256_of(shipped) == known.sha256:
        return shipped
    if dest is None:
        dest = Path.home() / ".cache" / "nanogpt" / known.name
    dest = Path(dest)
    if not dest.is_file():
        download(known.url, dest, known.name, known.sha256)
    return dest


def download(url: str, dest: str | os.PathLike, what: str, sha256: str | None = None) -> None:
    """Download url to dest (checked against sha256 when given), or raise UserError saying
    how to provide the file by hand. dest appears only once complete and checked."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {what} from {url} ({reason}); download it "
                        f"yourself and save it as {dest}, then run again") from None
    if sha256 is not None and sha256_of(tmp) != sha256:
        tmp.unlink(missing_ok=True)
        raise UserError(f"the download of {what} from {url} is not the expected file (sha256 "
                        f"differs from {sha256}); try again, or save the right file as {dest}")
    os.replace(tmp, dest)
