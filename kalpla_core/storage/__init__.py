"""The storage port: files kept locally or on S3, reached through signed URLs."""
