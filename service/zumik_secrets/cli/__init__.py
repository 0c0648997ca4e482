"""Command-line entry points (`zumik-secrets`) and the development PKI."""
