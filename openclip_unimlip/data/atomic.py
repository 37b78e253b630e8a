"""Writing a file so that a reader sees the old file or the complete new one, never half of one.

Every resumable writer of the package goes through :func:`atomic_path`: the dataset converters'
shards, CSV tables and reports (``data.shards``), the embedded dataset's manifest and the studies'
cell records and reports (``studies.grid``). The new content goes to ``<name>.tmp`` beside the
target and is renamed over it when complete (``os.replace``, atomic on one file system), so a run
killed mid-write leaves a stray ``.tmp`` file at worst, which a re-run overwrites.
"""
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """The temporary path to write ``path``'s new content to; renamed over ``path`` when the block
    ends without an error (on an error the temporary file stays, and ``path`` is untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    yield tmp
    os.replace(tmp, path)


def write_json_atomic(path: Union[str, os.PathLike], obj) -> None:
    """``obj`` as indented JSON with sorted keys (so equal content gives equal bytes); a value JSON
    has no type for (a path, a date) is written as its ``str``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n",
                       encoding="utf-8")


def write_bytes_atomic(path: Union[str, os.PathLike], data: bytes) -> None:
    # No fsync: it would dominate the time of writing many small images, and the rename alone
    # already guarantees that an interrupted process never leaves a partial file under the name.
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
