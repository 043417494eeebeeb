#!/usr/bin/env bash
# The long schemathesis run against a live server (the suite runs a short, seeded one).
#   bash scripts/fuzz_api.sh [max-examples per operation, default 500]
# Prints schemathesis' report; exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-500}"
port="${PORT:-18650}"
dir="$(mktemp -d)"
python3 -m app --port "$port" --db "$dir/fuzz.db" --log-level warning \
  --input-timeout 1 --run-timeout 5 > "$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/readyz" > /dev/null && break
  sleep 0.1
done
st --config-file tests/api/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" --checks all --exclude-path /v1/ws \
  --max-examples "$examples" --request-timeout 10 --no-color
if grep -q "unhandled_error" "$dir/server.log"; then
  echo "the server logged an unhandled error:"; grep -A5 unhandled_error "$dir/server.log"; exit 1
fi
