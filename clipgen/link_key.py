"""The key that signs the server's own links to the local store's objects. Kept with the store's data, so
links outlive a restart and every process that serves the store accepts the others' links.

Rotation: delete the file (`VIDEO_GENERATOR_DATA_DIR/link-signing.key`) and restart the servers; every
link signed before then stops working.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from clipgen.files import create_once

KEY_FILE = "link-signing.key"
KEY_BYTES = 32


def link_key(data_dir: Path) -> bytes:
    """The store's signing key, made on first use. Two processes starting together agree: the key is
    created once (clipgen.files), private to its owner, and never replaced."""
    path = data_dir / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    create_once(path, secrets.token_bytes(KEY_BYTES))  # the first process's key stands
    return _read(path)


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} holds no usable signing key: delete it to make a new one")
    return key
