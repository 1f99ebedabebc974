"""Job lifecycle: Celery app, job records in Redis, billing, webhooks, reaper."""
