#!/usr/bin/env bash
# Start `make run` in the background (embedded PostgreSQL under var/postgres, filesystem broker),
# check that it serves /healthz, /readyz and the login page, then stop the whole process group by
# pid and check that the embedded PostgreSQL stopped with it; then stop it with Ctrl-C in a terminal
# (scripts/smoke_ctrl_c.py).
set -euo pipefail
cd "$(dirname "$0")/.."
port="${NIYRA_WEB_PORT:-8000}"
log="$(mktemp)"
env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL setsid make run >"$log" 2>&1 &
pid=$!
stop() {
  # Every process of the group gets SIGTERM; the embedded-PostgreSQL wrapper waits for its
  # command to end, then stops the server (which runs in a session of its own).
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
trap stop EXIT

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
# Once everything is up, the login is printed again (it scrolled away) with where it is kept.
for _ in $(seq 1 20); do grep -q "niyra: ready on" "$log" && break; sleep 0.5; done
grep -A1 "niyra: ready on" "$log" | grep -q "niyra: Demo login: demo@niyra.local" || fail "login not repeated once ready"
make --no-print-directory demo-login | grep -q "Demo login: demo@niyra.local" || fail "make demo-login"
curl -fsS "http://127.0.0.1:${NIYRA_SANDBOX_PORT:-8765}/_sandbox/log" >/dev/null || fail "sandbox not serving"
grep -q "embedded PostgreSQL in .*var/postgres" "$log" || fail "not on the embedded PostgreSQL"
stop
trap - EXIT
if [ -e var/postgres/postmaster.pid ]; then fail "the embedded PostgreSQL is still running after make run ended"; fi
grep -q "embedded PostgreSQL in .*var/postgres stopped" "$log" || fail "no stop of the embedded PostgreSQL logged"
echo "quick start OK: on the embedded PostgreSQL, /healthz, /readyz, /login/ and the sandbox answer; demo login printed; everything stopped"
# Ctrl-C in a terminal, as a user stops it: status 0, no ERROR or Traceback line, no make error.
.venv/bin/python scripts/smoke_ctrl_c.py
