"""Jobs, without Celery: what a job is and how its record changes.

- ``states``: the status enum and the one table of allowed transitions, and the enums of
  every other outcome (claims, finishes, webhook deliveries, error codes);
- ``records``: the typed job input and record passed between processes;
- ``store``: the records in Redis, each status change one Lua script with its refund;
- ``views``: the public record a poll or a webhook shows;
- ``sizes``: output sizes, presets and the spec's bounds;
- ``inputs``: request rules the HTTP shim checks with the pipeline's knowledge;
- ``objects``: where a job's images and references live in the object store.
"""
