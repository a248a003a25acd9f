"""Shared risk state in Redis, for several bot4 processes at once.

One job per module:

* :mod:`bot4.shared.connection` — the URL, password and key namespace (from the environment)
* :mod:`bot4.shared.budget`     — the shared risk budget (Lua: check and reserve in one step)
* :mod:`bot4.shared.facts`      — the ``shared`` facts pack the rule files can read
* :mod:`bot4.shared.breaker`    — the shared circuit breaker and kill switch (key + pub/sub)
* :mod:`bot4.shared.bridge`     — bus events mirrored to a Redis Stream, and read back
* :mod:`bot4.shared.service`    — the session service that wires it all in

Redis is optional: without ``BOT4_REDIS_URL`` none of this is loaded.
"""
