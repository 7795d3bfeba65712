"""Redis URL helpers shared by config, server and every face: redaction and locality.

Example::

    >>> redact_url("redis://:secret@redis.example.com:6379")
    'redis://:****@redis.example.com:6379'
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# scheme://[user][:password]@rest  — matched textually so malformed URLs redact too.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@]*)@")


def redact_url(url: str) -> str:
    """Mask the password of a Redis URL as ``****``, keeping the user name (spec §5.2)."""
    m = _USERINFO.match(url)
    if not m or not m.group("pw"):
        return url
    return f"{m.group('scheme')}{m.group('user')}:****@{url[m.end():]}"


def is_local_host(host: str | None) -> bool:
    """``localhost``, ``::1`` and ``127.*`` count as local (spec §5.2 ``is_remote_redis``)."""
    if not host:
        return True
    return host in ("localhost", "::1") or host.startswith("127.")


def url_host(url: str) -> str | None:
    """Host part of a URL, or None for ``unix://`` sockets."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return None
    return parts.hostname
