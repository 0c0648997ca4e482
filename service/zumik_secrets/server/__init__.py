"""Server wiring: configuration, TLS, interceptors, health."""
