"""Thin servicers: convert the request, call the use case, convert the response."""
