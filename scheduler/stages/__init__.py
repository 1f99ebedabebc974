"""The Celery application and the stages a job goes through, in order:

- ``celery_app``: queues, routing and the names tasks are sent by;
- ``prepare`` (with ``moderation``): the CPU stage before any GPU time;
- the GPU stage: ``claiming`` (claim a batch, leases, the ownership watch), ``batching``
  (plan passes), ``running`` (run them on the pipeline, cancellation; ``run_batch``),
  ``uploading`` (encode images into the spool, record the results);
- ``spool``: finished images on local disk until the object store has them;
- ``lifecycle``: a job's terminal transitions (``Job.succeed``, ``fail``, ``cancel``,
  ``time_out``) with their side effects (webhook, metrics, refund wording, objects);
- ``webhooks``: signed deliveries with retries;
- ``reaper``: the beat's tick (deadlines, re-dispatch, due webhooks, purge);
- ``tasks``: the thin Celery task bodies.
"""
