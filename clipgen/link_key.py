"""The key that signs the server's own links to the local store's objects. Kept with the store's data, so
links outlive a restart and every process that serves the store accepts the others' links.

Rotation: delete the file (`VIDEO_GENERATOR_DATA_DIR/link-signing.key`) and restart the servers; every
link signed before then stops working.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

KEY_FILE = "link-signing.key"
KEY_BYTES = 32


def link_key(data_dir: Path) -> bytes:
    """The store's signing key, made on first use. Two processes starting together agree: the key is
    written to a private temporary file and linked into place, which fails if another got there first."""
    path = data_dir / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = data_dir / f".{KEY_FILE}.{secrets.token_hex(8)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(KEY_BYTES))
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)  # atomic, and never replaces a key another process made
    finally:
        temporary.unlink()
    return _read(path)


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} holds no usable signing key: delete it to make a new one")
    return key
