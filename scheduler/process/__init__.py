"""Process entry points: the worker and beat (``worker``), the HTTP endpoint they serve
for probes and Prometheus (``health``), and the C allocator setting of decoding processes
(``allocator``)."""
