#!/usr/bin/env bash
# The commands of the compromise runbooks in docs/operations/, one function per runbook step.
# The runbooks quote these functions; tests/integration/test_runbooks.py runs every one of them
# against a real server, in the order the runbooks give (server restarts in between are the
# operator's `kubectl rollout restart`, done by the test).
#
# Usage: scripts/runbooks.sh STEP [ARGS...]      (STEP names below; `list` prints them)
#
# Environment:
#   ADDR                host:port of a server (e.g. kubectl port-forward svc/zumik-secrets 50051)
#   P                   directory with ca.crt and <role>.crt/.key of the operator's identities
#                       (control-plane and auditor in the dev policy)
#   KEYRING             the master keyring file (the operator's offline copy, not the Secret)
#   ZUMIK_DATABASE_URL  the database, for the commands that work on it directly
#   OUT                 where evidence files go (receipts, exports, query results); default .
#   ZUMIK               the CLI (default: zumik-secrets, or .venv/bin/zumik-secrets in a checkout)
# Needs grpcurl and jq. Nothing secret is written to OUT: receipts, audit exports and public
# keys only.

set -euo pipefail

OUT=${OUT:-.}
ZUMIK=${ZUMIK:-$(command -v zumik-secrets || echo .venv/bin/zumik-secrets)}
as() { local role=$1; shift; grpcurl -cacert "$P/ca.crt" -cert "$P/$role.crt" -key "$P/$role.key" "$@"; }

# --- master key (docs/operations/master-key.md) -------------------------------------------------

# 1. A new primary version; the old one still unwraps. Then replace the Secret and restart.
master_key_add() {
  "$ZUMIK" keygen --add-version --out "$KEYRING"
}

# 2. After every pod runs with the new primary: rewrap everything under it, retire the old
#    version and drop it. --drop-version refuses (exit 1, keyring unchanged) while anything is
#    still wrapped under it. Then replace the Secret and restart again.
master_key_finish() {
  local old=$1
  "$ZUMIK" rewrap-data-keys --keyring "$KEYRING"
  "$ZUMIK" keygen --retire "$old" --out "$KEYRING"
  "$ZUMIK" keygen --drop-version "$old" --out "$KEYRING"
}

# --- claim-signing key (docs/operations/signing-key.md) -----------------------------------------

# Rotate, then end the old key's overlap at once: claims it signed are refused from now on.
signing_key_compromised() {
  as control-plane "$ADDR" zumik.secrets.v1.KeyService/RotateSigningKey > "$OUT/rotation.json"
  local old
  old=$(jq -r '(.previous_key // .previousKey).kid' "$OUT/rotation.json")
  "$ZUMIK" signing-keys retire "$old"
  "$ZUMIK" signing-keys list
}

# --- leaked API key or session (docs/operations/leaked-credential.md) ---------------------------

# Revoke a key by name, then list every audit event that names it (verifications) or was done
# with a claim minted from it (the event's subject is the key id), as TSV.
leaked_api_key() {
  local name=$1 tenant id
  tenant=$(cut -d/ -f2 <<<"$name")
  id=${name##*/}
  as control-plane -d "{\"name\":\"$name\"}" "$ADDR" zumik.secrets.v1.KeyService/RevokeApiKey
  credential_use "$tenant" "$name" "$id"
}

# The same for a session (`tenants/t/projects/p/sessions/ses_...`).
leaked_session() {
  local name=$1 tenant id
  tenant=$(cut -d/ -f2 <<<"$name")
  id=${name##*/}
  as control-plane -d "{\"name\":\"$name\"}" "$ADDR" zumik.secrets.v1.KeyService/RevokeSession
  credential_use "$tenant" "$name" "$id"
}

# Audit events of TENANT whose target is NAME or whose subject is ID, oldest first (from an
# ExportEvents stream, kept in OUT as evidence).
credential_use() {
  local tenant=$1 name=$2 id=$3
  as auditor -d "{\"parent\":\"tenants/$tenant\"}" "$ADDR" \
    zumik.secrets.v1.AuditService/ExportEvents > "$OUT/$tenant-export.jsonl"
  jq -r --arg name "$name" --arg id "$id" '
    .line | fromjson | select(.type == "event")
    | select(.target == $name or .subject == $id)
    | [.time, .seq, .actor, .action, .target, .outcome] | @tsv' \
    "$OUT/$tenant-export.jsonl" | tee "$OUT/credential-use.tsv"
}

# --- leaked client certificate (docs/operations/leaked-client-cert.md) --------------------------

# Write POLICY_OUT: POLICY_IN with SPIFFE_ID's entry renamed so that no certificate matches it
# (every call with the leaked certificate is then refused and audited). Deploy it (the
# ConfigMap's content hash rolls the pods); reissue the caller under NEW_ID and add NEW_ID.
deny_identity() {
  local policy_in=$1 policy_out=$2 spiffe_id=$3
  grep -qF "[identities.\"$spiffe_id\"]" "$policy_in" || { echo "$spiffe_id not in $policy_in" >&2; return 1; }
  sed "s|^\[identities\.\"$spiffe_id\"\]|[identities.\"$spiffe_id/revoked-$(date -u +%Y%m%d)\"]|" \
    "$policy_in" > "$policy_out"
}

# After the restart: calls with the leaked certificate are refused (PermissionDenied; the server
# audits every refusal). Exit 1 if the call went through.
check_identity_denied() {
  local role=$1 out
  out=$(as "$role" -d '{"parent":"tenants/acme","action":"probe","target":"x"}' "$ADDR" \
    zumik.secrets.v1.AuditService/AppendEvent 2>&1) || true
  echo "$out"
  if grep -q "code = PermissionDenied" <<<"$out"; then echo "refused: $role"
  else echo "NOT refused: $role" >&2; return 1; fi
}

# --- customer purge request (docs/operations/purge-request.md) ----------------------------------

# Purge a tenant, keep the receipt (send it to the customer) and verify it offline.
purge_tenant() {
  local tenant=$1
  as control-plane -d "{\"name\":\"tenants/$tenant\",\"confirm\":\"tenants/$tenant\"}" "$ADDR" \
    zumik.secrets.v1.TenantService/PurgeTenant > "$OUT/$tenant-receipt.json"
  as auditor "$ADDR" zumik.secrets.v1.AuditService/ListCheckpointKeys > "$OUT/checkpoint-keys.json"
  "$ZUMIK" purge verify-receipt "$OUT/$tenant-receipt.json" --keys "$OUT/checkpoint-keys.json"
}

# --- audit verification (docs/operations/audit-verification.md) ---------------------------------

# Export a tenant's chain and verify it offline against the checkpoint keys.
audit_verify() {
  local tenant=$1
  as auditor -d "{\"parent\":\"tenants/$tenant\"}" "$ADDR" \
    zumik.secrets.v1.AuditService/CreateCheckpoint > /dev/null
  as auditor -d "{\"parent\":\"tenants/$tenant\"}" "$ADDR" \
    zumik.secrets.v1.AuditService/ExportEvents | jq -r .line > "$OUT/$tenant-audit.jsonl"
  as auditor "$ADDR" zumik.secrets.v1.AuditService/ListCheckpointKeys > "$OUT/checkpoint-keys.json"
  # With a checkpoint witness (ZUMIK_AUDIT_WITNESS_DIR, a copy the database writer cannot
  # rewrite), the export must also agree with the checkpoints published there.
  "$ZUMIK" audit verify "$OUT/$tenant-audit.jsonl" --keys "$OUT/checkpoint-keys.json" \
    ${ZUMIK_AUDIT_WITNESS_DIR:+--witness "$ZUMIK_AUDIT_WITNESS_DIR"}
}

steps="master_key_add master_key_finish signing_key_compromised leaked_api_key leaked_session
credential_use deny_identity check_identity_denied purge_tenant audit_verify"
step=${1:-list}
shift || true
step=${step//-/_}
if [[ $step == list ]]; then echo $steps; exit 0; fi
[[ " ${steps//$'\n'/ } " == *" $step "* ]] || { echo "unknown step $step; steps: $steps" >&2; exit 2; }
"$step" "$@"
