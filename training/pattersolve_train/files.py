"""Files written whole or not at all: a temporary file beside the target, then ``os.replace``.

A reader (another process, or a run resumed after a kill) sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through ``<path>.tmp``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON (one space, a final newline) to ``path``, atomically."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
