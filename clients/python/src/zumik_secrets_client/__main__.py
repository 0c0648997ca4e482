"""``python -m zumik_secrets_client``: the version and every error reason with its class."""

from zumik_secrets_client import __version__, errors

print(f"zumik-secrets-client {__version__}: {len(errors.REASONS)} error reasons")
print(errors.reason_table())
