"""Redis itself, below the job store.

- ``keys``: every key name, in one place;
- ``scripts``: the Lua scripts under ``lua/`` and their loader;
- ``accounts``: accounts, API keys and balances;
- ``ratelimit``: per-key sliding-window limits;
- ``outage``: which errors mean Redis is out of reach, logged once;
- ``embedded``: a private redis-server for single-machine installs and tests.
"""
