#!/usr/bin/env bash
# make deploy: the whole stack in containers (deploy/docker-compose.yml) on this host's Docker engine.
#   STATIONCAST_DEMO=1 make deploy   also starts the replay job (compose profile "demo").
# Extra arguments go to `docker compose up` (e.g. deploy/deploy.sh --force-recreate).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
COMPOSE_FILE=deploy/docker-compose.yml

fail() {
  echo "make deploy: $1" >&2
  shift
  for line in "$@"; do echo "  $line" >&2; done
  echo "  Without containers, \`make deploy-local\` runs the same topology on this machine (embedded broker and" >&2
  echo "  store, the service, a local Prometheus with the same alert rules)." >&2
  exit 1
}

command -v docker >/dev/null 2>&1 ||
  fail "the docker CLI is not installed." \
       "Install Docker Engine and the Compose plugin (https://docs.docker.com/engine/install/), then rerun."

if ! docker_err=$(docker info 2>&1 >/dev/null); then
  fail "no Docker engine is reachable (\`docker info\` failed)." \
       "${docker_err%%$'\n'*}" \
       "Start the engine (e.g. \`sudo systemctl start docker\`) or point DOCKER_HOST at one, then rerun."
fi

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  fail "Docker Compose is missing." "Install the Compose v2 plugin (package docker-compose-plugin), then rerun."
fi

profile=()
if [[ "${STATIONCAST_DEMO:-0}" == 1 ]]; then profile=(--profile demo); fi

echo "+ ${compose[*]} -f $COMPOSE_FILE ${profile[*]} up -d --build $*"
"${compose[@]}" -f "$COMPOSE_FILE" "${profile[@]}" up -d --build "$@"

cat <<URLS

stationcast is starting (\`${compose[*]} -f $COMPOSE_FILE ps\` shows health):
  status page   http://localhost:8000/status
  API           http://localhost:8000/api/status
  metrics       http://localhost:8000/metrics
  Prometheus    http://localhost:9090        (alerts: http://localhost:9090/alerts)
  Grafana       http://localhost:3000        (dashboard "stationcast"; admin / \${GRAFANA_ADMIN_PASSWORD:-admin})
  Kafka         localhost:29092 from this host
Demo load: STATIONCAST_DEMO=1 make deploy   Stop: ${compose[*]} -f $COMPOSE_FILE down
URLS
