"""Where outputs go: the one atomic writer and the checks that keep a user's files safe.

Every file onnxcompress writes (models, containers, reports, output arrays) goes through
`atomic_output`: the bytes land in a short-named temporary file beside the target and are
renamed onto it only when complete, so a crash or a full disk never leaves half a file under
the final name. Before anything is written, `check_outputs` refuses an output that is the same
file as an input or as another output (symlinks and `..` included) and a target that exists but
is not a regular file (a FIFO or a device is never replaced). Written files get the mode a new
file would get under the user's umask, like any other tool's output.

Imports nothing else of the project but its errors: the container writer uses it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import BadInputError

PathLike = str | os.PathLike


def same_file(a: PathLike, b: PathLike) -> bool:
    """True if both paths name one file (symlinks, `..`, hard links); False if either is absent."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_outputs(outputs: Iterable[tuple[str, PathLike | None]],
                  inputs: Iterable[tuple[str, PathLike | None]] = ()) -> None:
    """Refuse outputs that would destroy an input, collide with each other, or replace a file
    that is not a regular file. `outputs` and `inputs` are (what, path) pairs, e.g.
    ("-o", "small.onnxc"); None paths are skipped."""
    outs = [(what, Path(p)) for what, p in outputs if p is not None]
    ins = [(what, Path(p)) for what, p in inputs if p is not None]
    for i, (what, path) in enumerate(outs):
        kind = _not_regular(path)
        if kind:
            raise BadInputError(f"{what} {path}: {kind}; onnxcompress writes regular files only "
                                "and never replaces anything else: choose another path")
        for in_what, src in ins:
            if same_file(path, src):
                raise BadInputError(f"{what} {path} is the same file as the {in_what} {src}; "
                                    "refusing to overwrite an input: choose another path")
        for other_what, other in outs[:i]:
            if same_file(path, other):
                raise BadInputError(f"{what} {path} and {other_what} {other} are the same "
                                    "file; give each output its own path")


def _not_regular(path: Path) -> str:
    """'' for a regular file or a free name, else what is there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""  # nothing there (or a name the write itself will refuse, with its reason)
    if stat.S_ISREG(mode):
        return ""
    return "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it becomes `path` only if the block succeeds.

    OS errors (a read-only folder, a full disk, a name too long) become BadInputError naming
    `path`; the temporary file never survives.
    """
    path = Path(path)
    kind = _not_regular(path)
    if kind:
        raise BadInputError(f"{path}: {kind}; onnxcompress replaces regular files only: "
                            "choose another path")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a short name: the target's own name may already be near the 255-byte limit
        fd, tmp = tempfile.mkstemp(prefix=".onnxcompress-", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise BadInputError(f"{path}: cannot write: {_os_reason(e)}") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes(path: PathLike, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `path` atomically (flushed to disk before the rename)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.writelines(chunks)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, [text.encode()])


def _os_reason(e: OSError) -> str:
    reasons = {
        errno.EACCES: "permission denied (is the folder read-only?)",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EFBIG: "the file is too large for this file system",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENAMETOOLONG: "the file name is too long",
        errno.ENOTDIR: "a part of the path is not a folder",
    }
    return reasons.get(e.errno, e.strerror or str(e))

