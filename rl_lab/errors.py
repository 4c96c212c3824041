"""User errors: bad config, override, path, env id or checkpoint.

The CLI turns a UserError into one line on stderr and exit status 2; anything else is a bug (exit 1).
"""


class UserError(Exception):
    """A problem the user can fix; its message names the problem and, where possible, the fix."""
