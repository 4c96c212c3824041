"""What the user is told when a command cannot go on: user errors (exit 2) and a diverged run (exit 3).

The CLI turns a UserError into one line on stderr and exit status 2, a Diverged into one line and exit status 3;
anything else is a bug (exit 1).
"""

from __future__ import annotations

import errno
import math

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3

# OSErrors that the machine, not the code, causes: the user fixes them (free space, another run.dir, permissions)
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR}


class UserError(Exception):
    """A problem the user can fix; its message names the problem and, where possible, the fix."""


class Diverged(Exception):
    """Training produced a non-finite loss or weights at `step`; the run stops there, its last finite checkpoint
    kept (nothing non-finite is ever saved)."""

    def __init__(self, step: int, what: str):
        super().__init__(f"training diverged at step {step}: {what}")
        self.step, self.what = step, what

    @classmethod
    def check(cls, step: int, metrics: dict | None, what: str = "training figures") -> None:
        """Raise when any number in `metrics` (an update's loss, grad norm, ...) is NaN or infinite."""
        bad = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not math.isfinite(v)}
        if bad:
            raise cls(step, f"non-finite {what}: {', '.join(f'{k}={v}' for k, v in bad.items())}")


def environment_error(err: OSError) -> bool:
    """Whether `err` is the machine's doing (full disk, read-only file system, no permission, a file where a
    directory belongs), to be told in one line rather than as a bug."""
    return err.errno in ENVIRONMENT_ERRNOS


def os_error_line(err: OSError) -> str:
    """One line for an environment OSError: what failed and on which path."""
    where = f": {err.filename}" if err.filename else ""
    return f"{err.strerror or err}{where}"
