"""Outbound HTTP to URLs users choose (the SSRF guard), in one direction:

``policy`` (which URLs may be reached) -> ``transport`` (one exchange over a socket pinned
to the checked addresses) -> ``guard`` (fetch and post: redirects, status, deadline).
``signing`` holds the spec's webhook signature. Nothing here knows about jobs or Celery.
"""
