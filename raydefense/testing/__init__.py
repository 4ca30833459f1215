"""Test and benchmark helpers that users can run too (a local S3 server)."""
