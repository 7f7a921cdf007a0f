#!/usr/bin/env bash
# make deploy-local: the deploy topology without containers, on this machine.
#   1. `stationcast run --keep-serving --http-port PORT` in the background: embedded broker and store, the
#      service, and a replay of real station records;
#   2. Prometheus on 127.0.0.1:9090 with deploy/prometheus/prometheus-local.yml (target 127.0.0.1:PORT) and the
#      alert rules of deploy/prometheus/alerts.yml;
#   3. waits until both answer, prints the URLs, and stops both on Ctrl-C.
# Settings (environment): STATIONCAST_HTTP_PORT (8000), PROMETHEUS_LISTEN (127.0.0.1:9090),
# STATIONCAST_VAR_DIR (var: runtime files and logs), STATIONCAST_BIN (the stationcast command), PROMETHEUS_BIN
# (prometheus), STATIONCAST_START_TIMEOUT (seconds, 180). Extra arguments go to `stationcast run`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PORT=${STATIONCAST_HTTP_PORT:-8000}
PROM_LISTEN=${PROMETHEUS_LISTEN:-127.0.0.1:9090}
VAR=${STATIONCAST_VAR_DIR:-var}
TIMEOUT=${STATIONCAST_START_TIMEOUT:-180}
PROMETHEUS=${PROMETHEUS_BIN:-prometheus}

die() { echo "make deploy-local: $*" >&2; exit 1; }

if ! command -v "$PROMETHEUS" >/dev/null 2>&1; then
  die "the prometheus binary ($PROMETHEUS) is not installed.
  Debian/Ubuntu: apt-get install -y prometheus   (brings prometheus and promtool; stop its system service if it
  starts one on port 9090), or put a release binary from https://prometheus.io/download/ on PATH. Then rerun."
fi

if [[ -n "${STATIONCAST_BIN:-}" ]]; then
  read -r -a STATIONCAST <<<"$STATIONCAST_BIN"
elif [[ -x .venv/bin/stationcast ]]; then
  STATIONCAST=(.venv/bin/stationcast)
elif command -v stationcast >/dev/null 2>&1; then
  STATIONCAST=(stationcast)
else
  die "the stationcast command is not installed: python -m venv .venv && .venv/bin/pip install -e '.[demo]' (see README)"
fi

port_busy() { (exec 3<>"/dev/tcp/${1}/${2}") 2>/dev/null; }
port_busy 127.0.0.1 "$PORT" && die "port $PORT is in use; set STATIONCAST_HTTP_PORT to a free port"
port_busy "${PROM_LISTEN%:*}" "${PROM_LISTEN##*:}" && die "$PROM_LISTEN is in use (another Prometheus?); set PROMETHEUS_LISTEN"

http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
  fi
}

mkdir -p "$VAR/prometheus" "$VAR/log"
CONFIG="$VAR/prometheus-local.yml"
sed -e "s|127\.0\.0\.1:8000|127.0.0.1:${PORT}|" \
    -e "s|127\.0\.0\.1:9090|${PROM_LISTEN}|" \
    -e "s|^  - alerts\.yml\$|  - ${ROOT}/deploy/prometheus/alerts.yml|" \
    deploy/prometheus/prometheus-local.yml > "$CONFIG"
if command -v promtool >/dev/null 2>&1; then
  promtool check config "$CONFIG" >/dev/null || die "promtool rejects $CONFIG (see above)"
fi

SVC_PID="" PROM_PID=""
# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
  trap - EXIT INT TERM
  echo
  for pid in $SVC_PID $PROM_PID; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=""
    for pid in $SVC_PID $PROM_PID; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ -z "$alive" ]] && break
    sleep 0.2
  done
  for pid in $SVC_PID $PROM_PID; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped stationcast and Prometheus (logs in $VAR/log/)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "+ ${STATIONCAST[*]} run --keep-serving --http-port $PORT $*   (log: $VAR/log/stationcast.log)"
"${STATIONCAST[@]}" run --keep-serving --http-port "$PORT" "$@" >"$VAR/log/stationcast.log" 2>&1 &
SVC_PID=$!
echo "+ $PROMETHEUS --config.file=$CONFIG --storage.tsdb.path=$VAR/prometheus --web.listen-address=$PROM_LISTEN"
"$PROMETHEUS" --config.file="$CONFIG" --storage.tsdb.path="$VAR/prometheus" --web.listen-address="$PROM_LISTEN" \
  >"$VAR/log/prometheus.log" 2>&1 &
PROM_PID=$!

wait_for() {  # name pid url log
  local deadline=$((SECONDS + TIMEOUT))
  until http_ok "$3"; do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "make deploy-local: $1 exited before answering $3; last lines of $4:" >&2
      tail -n 20 "$4" >&2 || true
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "make deploy-local: $1 did not answer $3 within ${TIMEOUT}s; last lines of $4:" >&2
      tail -n 20 "$4" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}
wait_for stationcast "$SVC_PID" "http://127.0.0.1:$PORT/healthz" "$VAR/log/stationcast.log"
wait_for Prometheus "$PROM_PID" "http://$PROM_LISTEN/-/ready" "$VAR/log/prometheus.log"

cat <<URLS

stationcast is up (no containers):
  status page   http://127.0.0.1:$PORT/status
  API           http://127.0.0.1:$PORT/api/status
  metrics       http://127.0.0.1:$PORT/metrics
  Prometheus    http://$PROM_LISTEN        (alerts: http://$PROM_LISTEN/alerts, targets: http://$PROM_LISTEN/targets)
  logs          $VAR/log/stationcast.log, $VAR/log/prometheus.log
Grafana is not started here: import deploy/grafana/dashboards/stationcast.json into any Grafana pointed at
http://$PROM_LISTEN. Press Ctrl-C to stop both.
URLS

set +e
wait -n "$SVC_PID" "$PROM_PID"
status=$?
set -e
if ! kill -0 "$SVC_PID" 2>/dev/null; then
  echo "make deploy-local: stationcast exited (status $status); see $VAR/log/stationcast.log" >&2
else
  echo "make deploy-local: Prometheus exited (status $status); see $VAR/log/prometheus.log" >&2
fi
exit 1
