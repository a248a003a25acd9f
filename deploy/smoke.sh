#!/bin/sh
# Smoke test of the compose stack where a Docker engine and the images are
# available (tests/test_stack.py proves the same parts natively, without
# Docker):
#
#   deploy/smoke.sh
#
# Brings the stack up as project bot4-smoke (its own containers and volumes,
# deleted at the end), waits for bot4 to be healthy, checks that Prometheus
# has every target up and reads the status RUNNING, that bot4 serves its
# session metrics, and that `docker compose stop bot4` (SIGTERM) ends bot4
# with exit code 0 and a summary written. Exit 0 when all hold; 77 when
# Docker is missing (the "skipped" code of automake-style runners).
set -eu
cd "$(dirname "$0")/.."

if ! docker compose version >/dev/null 2>&1; then
    echo "smoke: skipped, no \`docker compose\` here" >&2
    exit 77
fi
[ -d secrets ] || deploy/secrets.sh
dc="docker compose -p bot4-smoke"
trap '$dc down -v --remove-orphans >/dev/null 2>&1 || true' EXIT INT TERM

$dc up -d --build
fail() { echo "smoke: FAILED: $*" >&2; $dc ps -a >&2; $dc logs --tail 50 >&2; exit 1; }

wait_for() { # seconds description command...
    limit=$1; what=$2; shift 2
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 2)); [ "$i" -le "$limit" ] || fail "$what"
        sleep 2
    done
}

bot4_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$($dc ps -q bot4)")" = healthy ]; }
wait_for 180 "bot4 healthy" bot4_healthy

query() { # PromQL -> the first result's value
    curl -fsG http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1" \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
targets_up() { [ "$(query 'count(up == 1)')" = 3 ]; }
wait_for 60 "Prometheus: bot4, prometheus and alertmanager targets up" targets_up
running() { [ "$(query 'bot4:status')" = 1 ]; }
wait_for 60 "status RUNNING" running
curl -fs http://127.0.0.1:9464/metrics | grep -q '^bot4_session_info{' || fail "bot4 metrics"

$dc stop -t 30 bot4
code=$(docker inspect -f '{{.State.ExitCode}}' "$($dc ps -aq bot4)")
[ "$code" = 0 ] || fail "bot4 exited $code on SIGTERM"
$dc run --rm --no-deps bot4 sh -c 'test -s /data/out/summary.json' || fail "no summary after SIGTERM"
echo "smoke: ok"
