"""Small helpers shared by several stages."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def sha256_file(path: Path | str) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_stream(fh: BinaryIO) -> str:
    """sha256 of what is left to read in an open binary file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def stable_bucket(text: str, buckets: int) -> int:
    """A bucket in [0, buckets) from the sha256 of ``text``: the same on every machine, run and Python."""
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % buckets
