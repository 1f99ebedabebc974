"""Object storage: local disk and S3 backends with signed, expiring URLs."""
