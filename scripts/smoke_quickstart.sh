#!/usr/bin/env bash
# Start `make run` in the background (SQLite, filesystem broker), check that it serves
# /healthz, /readyz and the login page, then stop the whole process group by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${NIYRA_WEB_PORT:-8000}"
log="$(mktemp)"
env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL setsid make run >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 180); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "make run exited early"; exit 1; }
  sleep 1
done
fail() { echo "smoke test failed: $*"; cat "$log"; exit 1; }
curl -fsS "http://127.0.0.1:$port/healthz" | grep -q '"ok"' || fail "/healthz"
curl -fsS "http://127.0.0.1:$port/login/" | grep -q 'Sign in' || fail "login page"
ready=""
for _ in $(seq 1 30); do
  ready="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")"
  [ "$ready" = "200" ] && break
  sleep 1
done
[ "$ready" = "200" ] || fail "/readyz answered $ready"
grep -q "Demo login: demo@niyra.local" "$log" || fail "no demo login printed"
curl -fsS "http://127.0.0.1:${NIYRA_SANDBOX_PORT:-8765}/_sandbox/log" >/dev/null || fail "sandbox not serving"
echo "quick start OK: /healthz, /readyz, /login/ and the sandbox answer; demo login printed"
