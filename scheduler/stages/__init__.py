"""The Celery application and the stages a job goes through, in order:

- ``celery_app``: queues, routing and the names tasks are sent by;
- ``prepare`` (with ``moderation``): the CPU stage before any GPU time;
- ``batching``, ``execution``: the GPU stage (claim a batch, plan passes, run);
- ``spool``: finished images on local disk until the object store has them;
- ``lifecycle``: terminal transitions with their side effects (webhook, metrics, objects);
- ``webhooks``: signed deliveries with retries;
- ``reaper``: the beat's tick (deadlines, re-dispatch, due webhooks, purge);
- ``tasks``: the thin Celery task bodies.
"""
