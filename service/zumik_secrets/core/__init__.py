"""The pure core: domain rules, formats and crypto (stdlib and `cryptography` only)."""
