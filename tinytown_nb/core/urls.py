"""Redis URLs as people see them: the one password-masking rule, and locality.

Every face that shows a URL, an error text or a config masks passwords here, the way
upstream does (spec §5.2): ``redis://:****@host:port``.

Example::

    >>> redact_url("redis://:secret@redis.example.com:6379")
    'redis://:****@redis.example.com:6379'
    >>> redact("Error connecting to redis://u:pw@db:6379 (pw rejected)", "pw")
    'Error connecting to redis://u:****@db:6379 (**** rejected)'
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# scheme://[user]:password@rest — matched textually so malformed URLs redact too.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@\s]*)@")
MASK = "****"


def redact_url(url: str) -> str:
    """Mask the password of a Redis URL as ``****``, keeping the user name (spec §5.2).

    >>> redact_url("rediss://default:cloud-secret@")
    'rediss://default:****@'
    >>> redact_url("unix:///tmp/t/.tt/redis.sock")
    'unix:///tmp/t/.tt/redis.sock'
    """
    m = _USERINFO.match(url)
    if not m or not m.group("pw"):
        return url
    return f"{m.group('scheme')}{m.group('user')}:{MASK}@{url[m.end():]}"


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every URL password and every given secret (also percent-decoded)
    masked, on one line: for error texts that may echo a URL or a password.

    >>> redact("AUTH failed for s%40cret", "s%40cret")
    'AUTH failed for ****'
    """
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@"
                         if m.group("pw") else m.group(0), text)
    for secret in {s for s in secrets if s} | {unquote(s) for s in secrets if s}:
        text = text.replace(secret, MASK)
    return " ".join(text.split())


def is_local_host(host: str | None) -> bool:
    """``localhost``, ``::1`` and ``127.*`` count as local (spec §5.2 ``is_remote_redis``).

    >>> is_local_host("127.0.1.1"), is_local_host("redis.example.com")
    (True, False)
    """
    if not host:
        return True
    return host in ("localhost", "::1") or host.startswith("127.")
