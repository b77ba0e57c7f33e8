"""Files written whole or not at all, through :mod:`pattersolve.transaction`.

A temporary file beside the target is renamed into place, so a reader (another process, or a
run resumed after a kill) sees the old file or the new one, never half of one. The tool and the
training tree share this one mechanism.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pattersolve.transaction import write_atomic


def write_file_atomic(path: str | os.PathLike[str], writer: Callable[[str], object]) -> None:
    """Write ``path`` with ``writer(tmp_path)``, replacing any old file only when complete."""
    write_atomic(path, writer, overwrite=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    write_file_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON (one space, a final newline) to ``path``, atomically."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
