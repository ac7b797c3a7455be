"""Who may change things: reading is open, every mutation needs the web token.

One shared secret (``web_token`` in farm.toml, or ``FARM_WEB_TOKEN``) rather
than accounts: the farm is run by a handful of kernel developers and CI jobs,
and the actions it guards (start, pause, stop a campaign, queue a
reproduction) cost machine time, not data. HTML forms carry it in a password
field, API clients in ``Authorization: Bearer``; either way it is compared in
constant time. Because a cross-site form cannot know the token, it also stops
cross-site request forgery. Without a configured token every mutation is
refused, with a message saying how to set one.
"""

from __future__ import annotations

import hmac

NO_TOKEN = (
    "changes are disabled: this server has no web token. Set FARM_WEB_TOKEN (or web_token "
    "in farm.toml) to a long random secret, e.g. `export FARM_WEB_TOKEN=$(openssl rand -hex 24)`, "
    "and restart `farm web`"
)
MISSING = "this action needs the web token (the value of FARM_WEB_TOKEN on the server)"
WRONG = "wrong web token"


class Refused(Exception):
    """A mutation without the right token; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check(configured: str | None, given: str | None) -> None:
    """Raise Refused unless ``given`` is the configured token (constant-time comparison)."""
    if not configured:
        raise Refused(403, NO_TOKEN)
    if not given:
        raise Refused(401, MISSING)
    if not hmac.compare_digest(given.encode("utf-8"), configured.encode("utf-8")):
        raise Refused(401, WRONG)
