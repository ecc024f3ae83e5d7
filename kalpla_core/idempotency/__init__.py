"""Idempotency keys for creating money- or enrollment-moving resources."""
