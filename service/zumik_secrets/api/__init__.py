"""The gRPC boundary: contract metadata, status mapping, servicers."""
