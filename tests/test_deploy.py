"""deploy/: every file parses, the pieces agree with each other and with the real CLI, and the
external checkers pass (promtool, systemd-analyze, kubectl kustomize).

The metric names used by the rules and the dashboard are checked against a live daemon in
tests/test_deploy_metrics.py; the Redis ACL line in tests/test_deploy_redis_acl.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.redisproc import RedisProc

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "slotkeeper-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "slotkeeper-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "slotkeeper.json"
UNIT = DEPLOY / "systemd" / "slotkeeper-daemon.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "slotkeeper.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
SLOTKEEPER = str(Path(sys.executable).parent / "slotkeeper")
# Per-limit figures are the same on every daemon (they live in Redis): summing them directly over
# daemons doubles them. Aggregate with max by (namespace, limit) first.
SUMS_PER_LIMIT = re.compile(
    r"sum\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*(?:(?:rate|increase|irate)\(\s*)?"
    r"slotkeeper_(?!daemon_|redis_)"
)


# -- helpers shared with test_deploy_metrics ------------------------------------------------------


def tools_dir() -> Path:
    """Where deploy/ci-tools.sh installs the checkers."""
    env = os.environ.get("SLOTKEEPER_TOOLS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "slotkeeper" / "deploy-tools"


def missing(name: str) -> None:
    """Skip locally, fail in CI (CI runs deploy/ci-tools.sh first: a missing tool is a bug)."""
    msg = f"{name} not installed: run `bash deploy/ci-tools.sh`"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def tool(name: str) -> str:
    """Path of an external checker: PATH, else where deploy/ci-tools.sh unpacks it."""
    found = shutil.which(name)
    if found:
        return found
    cand = tools_dir() / "usr" / "bin" / name
    if cand.is_file() and os.access(cand, os.X_OK):
        return str(cand)
    missing(name)
    raise AssertionError("unreachable")


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def rules_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULES)["groups"]
    return groups


def rule_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rules_groups() for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return d


def dashboard_panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            exprs.append(q["query"])
    return exprs


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for f in sorted(K8S.glob("*.yaml")):
        docs.extend(load_yaml_all(f))
    return docs


def k8s(kind: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes"
    return found[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def daemon_argvs() -> dict[str, list[str]]:
    """Every place that starts the daemon -> its arguments after the `slotkeeper` executable."""
    out: dict[str, list[str]] = {}
    for name, svc in load_yaml(COMPOSE)["services"].items():
        if str(svc.get("image", "")).startswith("slotkeeper"):
            out[f"compose:{name}"] = [str(a) for a in svc["command"]]
    dep = k8s("Deployment")
    for c in dep["spec"]["template"]["spec"]["containers"]:
        assert "command" not in c, "keep the image's ENTRYPOINT (slotkeeper); set args only"
        out[f"kubernetes:{c['name']}"] = [str(a) for a in c["args"]]
    exec_start = unit_settings()["ExecStart"][0]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "slotkeeper"
    out["systemd"] = argv[1:]
    instr = dict(dockerfile_instructions())
    assert json.loads(instr["ENTRYPOINT"]) == ["slotkeeper"]
    out["Dockerfile CMD"] = json.loads(instr["CMD"])
    return out


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";", "[")):
            continue
        key, _, value = s.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def option_value(argv: list[str], opt: str) -> str | None:
    for i, a in enumerate(argv):
        if a == opt and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(opt + "="):
            return a.split("=", 1)[1]
    return None


def help_options(*args: str) -> set[str]:
    res = run([SLOTKEEPER, *args, "--help"])
    assert res.returncode == 0, res.stderr
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", res.stdout.split("Options:", 1)[1]))


# -- parsing --------------------------------------------------------------------------------------


def test_every_yaml_and_json_file_parses() -> None:
    yamls = [p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml")]
    assert len(yamls) >= 12
    for p in yamls:
        assert load_yaml_all(p), f"{p} is empty"
    for p in DEPLOY.rglob("*.json"):
        json.loads(p.read_text())


# -- the CLI options used everywhere are real ------------------------------------------------------


def test_deployments_use_only_real_cli_options() -> None:
    global_opts = help_options()
    daemon_opts = help_options("daemon")
    argvs = daemon_argvs()
    assert set(argvs) >= {
        "compose:daemon-a",
        "compose:daemon-b",
        "kubernetes:daemon",
        "systemd",
        "Dockerfile CMD",
    }
    for where, argv in argvs.items():
        assert "daemon" in argv, f"{where}: does not run `slotkeeper daemon`: {argv}"
        cut = argv.index("daemon")
        for part, allowed in ((argv[:cut], global_opts), (argv[cut + 1 :], daemon_opts)):
            for a in part:
                if a.startswith("-"):
                    assert a.split("=")[0] in allowed, f"{where}: {a} is not a slotkeeper option"


def test_deployment_arguments_are_accepted_by_the_real_daemon() -> None:
    """Each exact argument list runs one real reclaim pass (--once, no HTTP) and exits 0."""
    with RedisProc() as r:
        env = {**os.environ, "SLOTKEEPER_URL": r.url, "SLOTKEEPER_NAMESPACE": "deploycheck"}
        for where, argv in daemon_argvs().items():
            res = run([SLOTKEEPER, *argv, "--once", "--no-metrics"], env=env)
            assert res.returncode == 0, f"{where}: {argv}\n{res.stdout}\n{res.stderr}"


def test_containers_listen_on_every_interface_and_ports_agree() -> None:
    argvs = daemon_argvs()
    for where in ("compose:daemon-a", "compose:daemon-b", "kubernetes:daemon"):
        assert option_value(argvs[where], "--metrics-host") == "0.0.0.0", where
    # the image alone and systemd: loopback (whoever exposes the port says so deliberately)
    for where in ("systemd", "Dockerfile CMD"):
        assert option_value(argvs[where], "--metrics-host") == "127.0.0.1", where
    # compose publishes on the host's loopback only; Kubernetes admits only Prometheus
    ports = load_yaml(COMPOSE)["services"]["daemon-a"]["ports"]
    assert all(str(p).startswith("127.0.0.1:") for p in ports)
    pol = k8s("NetworkPolicy")["spec"]
    assert sorted(pol["policyTypes"]) == ["Egress", "Ingress"]
    assert [p["port"] for p in pol["ingress"][0]["ports"]] == ["metrics"]
    egress = {p["port"] for rule in pol["egress"] for p in rule["ports"]}
    assert egress == {6379, 6380, 26379, 53}
    port = {w: option_value(a, "--metrics-port") or "9808" for w, a in argvs.items()}
    assert set(port.values()) == {"9808"}, port
    dep = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in dep["ports"]] == [9808]
    instr = dockerfile_instructions()
    assert ("EXPOSE", "9808") in instr


# -- systemd --------------------------------------------------------------------------------------


def test_systemd_unit_settings() -> None:
    s = unit_settings()
    assert s["User"] == ["slotkeeper"] and s["Group"] == ["slotkeeper"]
    assert s["Restart"] == ["on-failure"]
    assert s["EnvironmentFile"] == ["/etc/slotkeeper/slotkeeper.env"]
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert key in s, f"hardening option {key} missing"
    text = UNIT.read_text()
    assert "SLOTKEEPER_URL=" not in " ".join(s.get("Environment", [])), "no URL in the unit"
    assert not re.search(r"redis(s|\+sentinel)?://[^\s]*:[^\s@]*@", text), "password in the unit"
    env = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(env) == {"SLOTKEEPER_NAMESPACE"}  # the URL is a credential, not in any environment
    assert s["LoadCredential"] == ["slotkeeper-url:/etc/slotkeeper/url"]
    assert "SLOTKEEPER_URL_FILE=%d/slotkeeper-url" in s["Environment"]


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this checkout's slotkeeper (verify checks it exists)."""
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/slotkeeper/bin/slotkeeper", SLOTKEEPER))
    return unit


def test_systemd_unit_passes_systemd_analyze_verify(verifiable_unit: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed on this machine (no systemd)")
    res = run([exe, "verify", str(verifiable_unit)], cwd=verifiable_unit.parent)
    # verify exits 0 on unknown keys too, so any message at all is a failure
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    sec = run(
        [exe, "security", "--offline=true", "--threshold=20", str(verifiable_unit)],
        cwd=verifiable_unit.parent,
    )
    assert sec.returncode == 0, sec.stdout[-600:] + sec.stderr
    assert re.search(r"Overall exposure level .*: \d\.\d (SAFE|OK)", sec.stdout), sec.stdout[-300:]


# -- container image ------------------------------------------------------------------------------


def test_dockerfile_is_small_non_root_and_secret_free() -> None:
    instr = dockerfile_instructions()
    args = {}
    for word, rest in instr:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
        if word == "FROM":
            break
    froms = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], rest.split()[0])
        for w, rest in instr
        if w == "FROM"
    ]
    assert froms and all(re.fullmatch(r"python:3\.\d+-slim(-\w+)?", f) for f in froms), froms
    final = instr[max(i for i, (w, _) in enumerate(instr) if w == "FROM") :]
    users = [rest for w, rest in final if w == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot)"
    assert final[-1][0] in ("CMD", "ENTRYPOINT") and any(w == "USER" for w, _ in final[-4:])
    text = DOCKERFILE.read_text()
    for word, rest in instr:
        if word in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|SLOTKEEPER_URL", rest, re.I), rest
    assert not re.search(r"redis(s)?://[^\s]*:[^\s@]*@", text), "credentials in the Dockerfile"
    assert any(w == "RUN" and "pip install" in r and ".whl" in r for w, r in final)
    # the k8s securityContext runs as the image's user
    pod = k8s("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert str(pod["runAsUser"]) == uid


def test_dockerfile_passes_hadolint() -> None:
    res = run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_copies_everything_the_wheel_needs() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; we support 3.10)
    section = pyproject.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    dirs = set(re.findall(r'^"[\w.]+"\s*=\s*"([^"]+)"', section, re.M))
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    assert dirs and readme
    needed = {"pyproject.toml", readme[1], *dirs}
    copied: set[str] = set()
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            srcs = rest.split()[:-1]
            for src in srcs:
                assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
                copied.add(src.rstrip("/"))
    assert needed <= copied, f"not copied into the build: {needed - copied}"
    # and the BuildKit ignore file (context = repository root) lets them through
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**") if "**" in ignore else 0] == "**"
    for n in needed:
        assert f"!{n}" in ignore or f"!{n}/" in ignore, f"{n} excluded by Dockerfile.dockerignore"
    scripts = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.findall(r"^(\w+)\s*=", scripts, re.M) == ["slotkeeper"]


# -- compose --------------------------------------------------------------------------------------


def test_compose_stack_is_wired_together() -> None:
    c = load_yaml(COMPOSE)
    services = c["services"]
    daemons = [n for n, s in services.items() if str(s.get("image", "")).startswith("slotkeeper")]
    assert len(daemons) == 2
    for n in daemons:
        s = services[n]
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
        url = s["environment"]["SLOTKEEPER_URL"]
        assert url.startswith("redis://redis:") and "@" not in url
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert s["read_only"] is True
        assert ":9808/healthz" in " ".join(s["healthcheck"]["test"])
    # Redis: AOF + noeviction, from the shipped fragment
    redis_svc = services["redis"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in redis_svc["volumes"] if v.startswith(".")}
    conf_path = next(a for a in redis_svc["command"] if a.endswith(".conf"))
    conf = (DEPLOY / mounted[conf_path]).read_text()
    for directive in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert re.search(rf"^{directive}$", conf, re.M), directive
    # every bind mount exists
    for s in services.values():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"compose mounts missing {src}"
    # Prometheus scrapes both daemons on their metrics port, and loads the rules
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    targets = [t for sc in jobs["slotkeeper"]["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == sorted(f"{n}:9808" for n in daemons)
    assert jobs["slotkeeper"]["honor_labels"] is True
    assert prom["rule_files"] == [RULES.name]
    prom_mounts = [v.split(":")[0] for v in services["prometheus"]["volumes"]]
    assert "./prometheus/slotkeeper-rules.yml" in prom_mounts
    # Grafana: provisioned datasource + dashboard folder holding the dashboard
    graf = {
        v.split(":")[1]: v.split(":")[0]
        for v in services["grafana"]["volumes"]
        if v.startswith(".")
    }
    prov = load_yaml(DEPLOY / "grafana/provisioning/dashboards/slotkeeper.yml")
    dash_dir = prov["providers"][0]["options"]["path"]
    assert (DEPLOY / graf[dash_dir] / DASHBOARD.name).is_file()
    ds = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"


# -- kubernetes -----------------------------------------------------------------------------------


def test_kubernetes_deployment() -> None:
    dep = k8s("Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] == c["ports"][0]["name"]
    res = c["resources"]
    assert {"cpu", "memory"} <= res["requests"].keys() and "memory" in res["limits"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["SLOTKEEPER_URL"]["valueFrom"]["secretKeyRef"]
    assert "value" not in env["SLOTKEEPER_URL"]
    secret = k8s("Secret")
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # a read-only root fs needs a writable /tmp for SLOTKEEPER_HOME
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert env["SLOTKEEPER_HOME"]["value"].startswith("/tmp/") and "/tmp" in mounts


def test_kubernetes_service_monitor_and_rules_agree() -> None:
    pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = k8s("Service")
    assert svc["metadata"]["name"] == "slotkeeper", "job label = Service name = rules' job"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    sm = k8s("ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == port["name"] and ep["path"] == "/metrics" and ep["honorLabels"] is True
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    prule = k8s("PrometheusRule")
    assert prule["spec"]["groups"] == rules_groups(), (
        "kubernetes/prometheusrule.yaml is stale: run deploy/kubernetes/sync-prometheusrule.sh"
    )
    kust = load_yaml(K8S / "kustomization.yaml")
    assert all((K8S / r).is_file() for r in kust["resources"])
    assert "secret.example.yaml" not in kust["resources"], "never apply the example secret"


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Strict: an unknown or misspelt field fails (CRDs such as ServiceMonitor have no schema)."""
    pip_dir = tools_dir() / "pip"
    if not (pip_dir / "kubernetes_validate").is_dir():
        missing("kubernetes-validate")
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    res = run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30", *files],
        env={**os.environ, "PYTHONPATH": str(pip_dir)},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for kind in ("deployment", "service", "poddisruptionbudget", "secret", "networkpolicy"):
        assert re.search(rf"passed for resource {kind}/", res.stdout + res.stderr), kind


def test_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed on this machine")
    res = run([kubectl, "kustomize", str(K8S)])
    assert res.returncode == 0, res.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(res.stdout) if d)
    assert kinds == [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceMonitor",
    ]


# -- Prometheus rules and the dashboard -------------------------------------------------------------


def test_alerts_cover_the_promised_conditions() -> None:
    exprs = rule_exprs()
    assert {
        "SlotkeeperLimitSaturated",
        "SlotkeeperLeasesExpiring",
        "SlotkeeperWaitTimeHigh",
        "SlotkeeperNoDaemon",
        "SlotkeeperDaemonDown",
        "SlotkeeperRedisUnreachable",
    } <= set(exprs)
    rules = {r["alert"]: r for g in rules_groups() for r in g["rules"]}
    assert rules["SlotkeeperLimitSaturated"]["for"] == "10m"
    assert "absent(" in exprs["SlotkeeperNoDaemon"]
    for name, r in rules.items():
        assert r["labels"]["severity"] in ("warning", "critical"), name
        assert r["annotations"]["summary"] and r["annotations"]["description"], name
        # per-limit figures are the same on every daemon: never sum them
        assert not SUMS_PER_LIMIT.search(r["expr"]), (name, r["expr"])


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    res = run([promtool, "check", "rules", str(RULES)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in res.stdout
    res = run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    res = run([promtool, "check", "config", "prometheus.yml"], cwd=RULES.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests_cover_every_alert() -> None:
    tested = {
        t["alertname"]
        for case in load_yaml(RULES_TEST)["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert tested == set(rule_exprs())


def test_dashboard_shows_what_was_promised() -> None:
    d = dashboard()
    assert d["uid"] == "slotkeeper" and d["schemaVersion"] >= 36
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "namespace", "limit"} <= names
    exprs = " ".join(dashboard_exprs())
    for metric in (
        "slotkeeper_limit_slots_in_use",
        "slotkeeper_limit_slots{",
        "slotkeeper_limit_waiters",
        "slotkeeper_wait_seconds_bucket",
        "slotkeeper_acquired_total",
        "slotkeeper_expired_total",
        "slotkeeper_redis_up",
        "slotkeeper_daemon_reclaim_duration_seconds_bucket",
    ):
        assert metric in exprs, metric
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for p in dashboard_panels():
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24
        for t in p.get("targets", []):
            assert not SUMS_PER_LIMIT.search(t["expr"]), (p["title"], t["expr"])


def test_dashboard_queries_are_valid_promql() -> None:
    """Every dashboard query, with Grafana's variables filled in, parses (promtool check rules)."""
    promtool = tool("promtool")
    rules = [
        {"record": f"dashboard:q{i}", "expr": fill_grafana_vars(e)}
        for i, e in enumerate(dashboard_exprs())
        if not e.startswith("label_values(")
    ]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"sk-dash-{os.getpid()}.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    try:
        res = run([promtool, "check", "rules", str(path)])
    finally:
        path.unlink()
    assert res.returncode == 0, res.stdout + res.stderr


def fill_grafana_vars(expr: str, namespace: str = ".*", rate_interval: str = "1m") -> str:
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$namespace", namespace)
        .replace("$limit", ".*")
    )


def docs_metrics() -> dict[str, tuple[str, str]]:
    """deploy/README.md's metrics table: name -> (type, labels)."""
    text = (DEPLOY / "README.md").read_text()
    rows = re.finditer(r"^\| `(slotkeeper_\w+)` \| (\w+) \| ([\w, ]*) \|", text, re.M)
    return {m[1]: (m[2], m[3]) for m in rows}


def test_readme_documents_the_acl_line_metrics_and_alerts() -> None:
    readme = (DEPLOY / "README.md").read_text()
    acl = [
        ln
        for ln in (DEPLOY / "redis" / "users.acl").read_text().splitlines()
        if ln.startswith("user ")
    ][0]
    assert acl in readme
    assert docs_metrics(), "no metrics table in deploy/README.md"
    for alert in rule_exprs():
        assert f"`{alert}`" in readme, f"alert {alert} not documented"


def test_ci_and_image_install_the_constraints() -> None:
    """One known-good version set (constraints.txt) for CI and the image, inside pyproject's
    ranges; redis-py >= 6 (TLS hostname checks on by default)."""
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert int(pins["redis"].split(".")[0]) >= 6
    assert '"redis[hiredis]>=6.0"' in (ROOT / "pyproject.toml").read_text()
    assert "-c constraints.txt" in (ROOT / "scripts" / "test.sh").read_text()
    build = [r for w, r in dockerfile_instructions() if w == "RUN" and "pip " in r]
    assert build and all("--constraint" in r for r in build), build


def test_constraints_lie_inside_pyproject_ranges() -> None:
    """Every pin in constraints.txt satisfies each range pyproject.toml states for that package
    (dependencies and every extra): CI tests a point the published ranges allow."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    pins = {
        canonicalize_name(name): version
        for name, version in (
            line.split("==", 1)
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")
        )
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        texts += extra
    checked = []
    for text in texts:
        req = Requirement(text)
        pin = pins.get(canonicalize_name(req.name))
        if pin is not None:
            assert req.specifier.contains(pin, prereleases=True), f"{pin} outside {text}"
            checked.append(req.name)
    assert {"prefect", "prefect-ray", "ray", "redis"} <= set(checked), checked
