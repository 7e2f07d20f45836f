#!/usr/bin/env bash
# Fuzz every route of openapi.yaml against `crm dev` on loopback with schemathesis: no server error,
# no answer that breaks the document. Bounded (20 examples per operation) and seeded, on a scratch
# database of the PostgreSQL in DATABASE_URL (a server URL; the database is created and dropped).
#   bash .ci/schemathesis.sh            # from the repository root, with the venv active
set -euo pipefail
cd "$(dirname "$0")/.."

server="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
scratch="crm_ci_fuzz_$$"
db="${server%/*}/$scratch"
work="$(mktemp -d)"
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  psql "$server" -qc "drop database if exists $scratch with (force)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql "$server" -qc "create database $scratch"

export DATABASE_URL="$db" CRM_DATA_DIR="$work/crm" CRM_JWT_SECRET="fuzz-jwt-secret-0123456789abcdef0123"
export CRM_CRON_SECRET="fuzz-cron-secret" CRM_BOOKING_RATE_LIMIT=0 CRM_LOG_LEVEL=ERROR
crm dev --port "$port" --host 127.0.0.1 --no-jobs >"$work/dev.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/dev.log"; exit 1; }
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null

# Credentials of the demo org, so the fuzzer gets past authentication too.
manager="$(psql "$db" -Atc "select s.user_id from public.staff s join public.organizations o on o.id = s.org_id where o.slug = 'demo' limit 1")"
token="$(crm token --user "$manager")"
api_key="$(psql "$db" -Atc "select public.create_api_key(id, 'fuzz', '{customers:read,orders:read,leads:write}') ->> 'key' from public.organizations where slug = 'demo'")"

status=0
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "${CRM_FUZZ_EXAMPLES:-20}" --seed "${CRM_FUZZ_SEED:-17}" --workers 2 --request-timeout 30 \
  --suppress-health-check all --warnings off --no-color \
  -H "Authorization: Bearer $token" -H "X-Api-Key: $api_key" -H "X-Cron-Secret: $CRM_CRON_SECRET" || status=$?
if grep -q "crashed\|Traceback" "$work/dev.log"; then
  echo "crm dev logged a crash:"; cat "$work/dev.log"; status=1
fi
exit "$status"
