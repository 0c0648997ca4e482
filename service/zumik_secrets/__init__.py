"""Zumik Secrets: a gRPC secrets service."""
