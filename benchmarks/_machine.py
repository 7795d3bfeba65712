"""What every benchmark prints first: the machine, the Python stack and the server.

Example::

    >>> print(describe(town, rq=rq.__version__))   # doctest: +SKIP
    Machine: x86_64 2 cores, Linux 6.18
    Python 3.11.7, redis-py 8.1.0 (hiredis 3.5.0), rq 3.0.0, server valkey 8.1.8 on unix:///...
"""

from __future__ import annotations

import os
import platform

import redis


def describe(town, **versions: str) -> str:
    """Two lines naming the machine and the software a figure was measured with."""
    info = town.redis.info("server")
    server = (f"valkey {info['valkey_version']}" if "valkey_version" in info
              else f"redis {info.get('redis_version')}")  # valkey also reports a redis_version
    try:
        import hiredis
        parser = f"hiredis {hiredis.__version__}"
    except ImportError:
        parser = "pure-Python parser"
    extra = "".join(f", {name} {version}" for name, version in versions.items())
    return (f"Machine: {platform.machine()} {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}\n"
            f"Python {platform.python_version()}, redis-py {redis.__version__} ({parser}){extra}, "
            f"server {server} on {town.url}")
