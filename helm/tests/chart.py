#!/usr/bin/env python3
"""Offline checks of the Helm chart helm/pylon, with Helm's own Go code (helm-python-sdk
binds Helm 4's SDK; no helm binary, no cluster, no network).

    python3 helm/tests/chart.py [--pylon target/debug/pylon]   every check below
    python3 helm/tests/chart.py render [--values FILE]          the manifests, to stdout

What is checked:
  - `helm lint --strict` (Kubernetes KUBE_VERSION), with the defaults and every value set
    of helm/tests/values/;
  - every value set passes values.schema.json and renders; every rendered object passes
    kubernetes-validate --strict (Kubernetes KUBE_VERSION's OpenAPI schemas, unknown
    fields refused), except the prometheus-operator kinds (ServiceMonitor,
    PrometheusRule), which it has no schema for: those get the structural check in
    CRD_SCHEMAS below (the fields the chart writes, unknown fields refused), not the CRD's;
  - behaviour: the rendered pylon.toml holds exactly the values' `config` (one to one), and
    with --pylon the real binary reads it with the pod's PYLON_* environment
    (`pylon config`) and runs exactly the roles asked for (or, with none, the embedded
    default's); the securityContext; one p2p Service per pod (or host ports); with the
    booster role, its heads' port range on the Services, host ports and NetworkPolicy,
    and (with --pylon) that range is the one the binary's heads listen on; probes
    on the metrics port; the node-key Secret only in a read-only init container; no key
    material in any object; the alert rules and dashboards are the repository's own;
  - each file of helm/tests/bad-values/ is refused, with the error its `# expect:` names;
  - values.schema.json's `config` against README.md's configuration table and
    helm/tests/values/every-key.yaml, so a key added to Pylon cannot be missed here.

Not checked: anything a cluster would do (admission, scheduling, a LoadBalancer getting
an address, NetworkPolicy enforcement); that the image runs the rendered pod (the
podman test does that with `render`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import yaml

import helm_python as helm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHART = os.path.join(ROOT, "helm", "pylon")
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "pylon", "p2p"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Keys of Pylon's config the chart sets itself (the schema refuses them under `config`).
CHART_OWNED = {"data_dir", "metrics.listen", "admin.listen", "admin.token_file"}
UID = 10001
# Pylon's defaults of the booster keys that size the heads' port range (roles/src/booster/
# mod.rs, Config::default), as the chart's pylon.booster assumes them: a key the values
# leave out keeps Pylon's default. With --pylon, held to the binary's.
BOOSTER_DEFAULTS = {
    "port_base": 4101,
    "max_heads": 64,
    "listen": ["/ip4/0.0.0.0/tcp/{port}", "/ip4/0.0.0.0/udp/{port}/quic-v1"],
}


def same(a, b) -> bool:
    """Equal, types included: 1024 is not 1024.0 (Pylon refuses a float for a count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@contextlib.contextmanager
def quiet_stderr():
    """Helm's Go logger writes INFO lines (one per symlink) to fd 2: kept unless failing."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode(errors="replace"))


def load_chart() -> helm.Chart:
    with quiet_stderr():
        return helm.Chart.load(CHART)


def render(chart: helm.Chart, values: dict) -> dict[str, str]:
    """Template name -> rendered text (NOTES.txt included)."""
    with quiet_stderr():
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict]:
    out = []
    for name in sorted(rendered):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[name]):
            if doc:
                out.append(doc)
    return out


def manifest_text(rendered: dict[str, str]) -> str:
    """Multi-document YAML, as `helm template` prints it."""
    parts = []
    for name in sorted(rendered):
        if name.endswith("NOTES.txt"):
            continue
        for doc in re.split(r"(?m)^---\s*$", rendered[name]):
            if doc.strip() and yaml.safe_load(doc):
                parts.append(f"# Source: {name}\n{doc.strip()}\n")
    return "---\n" + "---\n".join(parts)


def head_ports(booster: dict, defaults: dict) -> set[tuple[str, int]]:
    """(protocol, port) of every head of a [roles.booster] section, its keys filled in
    from `defaults`: head i on port_base + i, TCP if a listen template has /tcp/{port},
    UDP if one has /udp/{port}."""
    b = {**defaults, **{k: x for k, x in booster.items() if x is not None}}
    protocols = [p for p, t in (("TCP", "/tcp/{port}"), ("UDP", "/udp/{port}")) if any(t in a for a in b["listen"])]
    return {(p, b["port_base"] + i) for i in range(b["max_heads"]) for p in protocols}


def head_port_name(protocol: str, port: int, base: int) -> str:
    return f"h{port - base}-{'tcp' if protocol == 'TCP' else 'quic'}"


def load_values(path: str | None) -> dict:
    if not path:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


# ---- Structural schemas of the prometheus-operator objects the chart writes ----------
# Written from the fields the chart uses (monitoring.coreos.com/v1), unknown ones refused.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}


def _closed(properties: dict, required: tuple[str, ...] = (), **extra) -> dict:
    """An object schema that allows only `properties` and requires `required`."""
    return {"type": "object", "additionalProperties": False, "required": list(required), "properties": properties, **extra}


_META = _closed({"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STR_MAP}, ("name", "namespace", "labels"))


def _array(items: dict) -> dict:
    return {"type": "array", "minItems": 1, "items": items}


def _crd(kind: str, spec: dict) -> dict:
    """A prometheus-operator object of `kind` whose spec is `spec`."""
    return _closed(
        {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind}, "metadata": _META, "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )


CRD_SCHEMAS = {
    "ServiceMonitor": _crd("ServiceMonitor", _closed({
        "selector": _closed({"matchLabels": _STR_MAP}),
        "namespaceSelector": _closed({"matchNames": {"type": "array", "items": {"type": "string"}}}),
        "endpoints": _array(_closed(
            {"port": {"type": "string"}, "path": {"type": "string"}, "interval": _DURATION, "scrapeTimeout": _DURATION},
            ("port",),
        )),
    }, ("selector", "endpoints"))),
    "PrometheusRule": _crd("PrometheusRule", _closed({
        "groups": _array(_closed({
            "name": {"type": "string"},
            "interval": _DURATION,
            "rules": _array(_closed(
                {
                    "alert": {"type": "string"},
                    "record": {"type": "string"},
                    "expr": {"type": "string", "minLength": 1},
                    "for": _DURATION,
                    "labels": _STR_MAP,
                    "annotations": _STR_MAP,
                },
                ("expr",),
                oneOf=[{"required": ["alert"]}, {"required": ["record"]}],
            )),
        }, ("name", "rules"))),
    }, ("groups",))),
}

class Checks:
    def __init__(self, pylon: str | None):
        self.pylon = pylon
        self.passed = 0
        self.failures: list[str] = []
        self.chart = load_chart()
        self._booster_defaults: dict | None = None

    def ok(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL: {what}", file=sys.stderr)
        return cond

    # ---- lint --------------------------------------------------------------------------
    def lint(self, label: str, values: dict | None) -> None:
        with quiet_stderr():
            report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        # Severity 1 is "info" (Chart.yaml has no icon); warnings and errors fail.
        bad = [m for m in report["messages"] if m["severity"] >= 2] + [
            {"path": "", "error": e} for e in report.get("errors", [])
        ]
        self.ok(not bad, f"helm lint --strict ({label}): {bad}")

    # ---- one value set -----------------------------------------------------------------
    def value_set(self, path: str) -> None:
        label = os.path.relpath(path, ROOT)
        values = load_values(path)
        try:
            with quiet_stderr():
                self.chart.validate_schema(values)
            rendered = render(self.chart, values)
        except helm.HelmError as e:
            self.ok(False, f"{label}: refused: {e}")
            return
        self.passed += 1
        self.lint(label, values)
        merged = self.chart.merge_values(values)
        objs = objects(rendered)
        for obj in objs:
            self.validate(label, obj)
        self.behaviour(label, values, merged, objs, rendered)

    def validate(self, label: str, obj: dict) -> None:
        what = f"{label}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") in CRD_KINDS:
            errors = sorted(
                jsonschema.Draft202012Validator(CRD_SCHEMAS[obj["kind"]]).iter_errors(obj), key=str
            )
            self.ok(not errors, f"{what}: structural check: {[e.message for e in errors]}")
            return
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            self.passed += 1
        except kubernetes_validate.ValidationError as e:
            self.ok(False, f"{what}: kubernetes-validate --strict {KUBE_VERSION}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            self.ok(False, f"{what}: {e.message}")

    def behaviour(self, label, values, v, objs, rendered) -> None:
        by_kind: dict[str, list[dict]] = {}
        for o in objs:
            by_kind.setdefault(o["kind"], []).append(o)
        fullname = RELEASE if "pylon" in RELEASE else f"{RELEASE}-pylon"
        replicas = v["replicaCount"]
        exposure = v["p2p"]["exposure"]
        port = v["p2p"]["port"]
        ok = self.ok

        # No secret, and no key material, in anything rendered.
        text = "\n".join(t for n, t in rendered.items())
        ok("Secret" not in by_kind, f"{label}: the chart renders no Secret")
        # A protobuf Ed25519 private key (08 01 12 40 …) in base64 starts with CAESQ; PEM keys say PRIVATE KEY.
        ok(not re.search(r"CAES[A-Za-z0-9+/]{20,}|PRIVATE KEY", text), f"{label}: key material in the output")

        (sts,) = by_kind["StatefulSet"]
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        ok(spec["replicas"] == replicas, f"{label}: replicas")
        ok(
            [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["data"],
            f"{label}: one volumeClaimTemplate, data",
        )
        # Security context: the pod's and every container's.
        psc = pod["securityContext"]
        ok(
            psc.get("runAsNonRoot") is True
            and psc.get("runAsUser") == UID
            and psc.get("fsGroup") == UID
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{label}: pod securityContext {psc}",
        )
        containers = pod["containers"] + pod.get("initContainers", [])
        for c in containers:
            sc = c.get("securityContext", {})
            ok(
                sc.get("runAsNonRoot") is True
                and sc.get("runAsUser") == UID
                and sc.get("readOnlyRootFilesystem") is True
                and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]
                and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                f"{label}: container {c['name']} securityContext {sc}",
            )
            ok("resources" in c and c["resources"].get("limits", {}).get("memory"), f"{label}: {c['name']} memory limit")
        (main,) = [c for c in pod["containers"] if c["name"] == "pylon"]
        ports = {p["name"]: p for p in main["ports"]}
        ok(
            ports["p2p-tcp"]["containerPort"] == port and ports["p2p-tcp"]["protocol"] == "TCP"
            and ports["p2p-quic"]["containerPort"] == port and ports["p2p-quic"]["protocol"] == "UDP",
            f"{label}: p2p ports TCP and UDP on {port}",
        )
        ok(ports["metrics"]["containerPort"] == v["metrics"]["port"], f"{label}: metrics port")
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = main.get(probe, {}).get("httpGet", {})
            ok(get.get("path") == path and get.get("port") == "metrics", f"{label}: {probe} {get}")
        env = {e["name"]: e for e in main["env"]}
        ok(
            env["PYLON_METRICS__LISTEN"]["value"].endswith(f":{v['metrics']['port']}"),
            f"{label}: metrics.listen on the metrics port",
        )
        admin_listen = env["PYLON_ADMIN__LISTEN"]["value"]
        ok(
            admin_listen.startswith("127.0.0.1:") != bool(v["admin"]["expose"]),
            f"{label}: admin API on loopback unless exposed ({admin_listen})",
        )
        ok(env["PYLON_DATA_DIR"]["value"] == "/var/lib/pylon", f"{label}: data_dir")
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        ok(mounts["/var/lib/pylon"]["name"] == "data", f"{label}: the volume at /var/lib/pylon")
        ok(mounts["/etc/pylon"].get("readOnly") is True, f"{label}: config mounted read-only")

        # The node key: only from an existing Secret, only in a read-only init container.
        volumes = {vol["name"]: vol for vol in pod.get("volumes", [])}
        secret_vols = {n for n, vol in volumes.items() if "secret" in vol}
        ok(not ({m["name"] for m in main["volumeMounts"]} & secret_vols), f"{label}: no Secret mounted in the node's container")
        if v["nodeKey"]["existingSecret"]:
            inits = {c["name"]: c for c in pod.get("initContainers", [])}
            init = inits.get("node-key")
            ok(init is not None, f"{label}: node-key init container")
            if init:
                km = [m for m in init["volumeMounts"] if m["name"] == "node-key"]
                ok(km and km[0].get("readOnly") is True, f"{label}: node key Secret mounted read-only")
                ok(init["command"][:3] == ["install", "-m", "0600"] and init["command"][-1] == "/var/lib/pylon/identity.key",
                   f"{label}: the key copied with mode 0600 to the data dir")
                ok(volumes["node-key"]["secret"]["secretName"] == v["nodeKey"]["existingSecret"], f"{label}: key Secret name")
        else:
            ok("node-key" not in volumes, f"{label}: no key Secret unless asked")

        # Exposure: one p2p Service per pod, or host ports / host network.
        services = by_kind.get("Service", [])
        p2p_svcs = [s for s in services if s["metadata"]["labels"].get("app.kubernetes.io/component") == "p2p"]
        (headless,) = [s for s in services if s["spec"].get("clusterIP") == "None"]
        ok(spec["serviceName"] == headless["metadata"]["name"], f"{label}: serviceName is the headless Service")
        if exposure == "service":
            ok(len(p2p_svcs) == replicas, f"{label}: {len(p2p_svcs)} p2p Services for {replicas} pods")
            pods = sorted(s["spec"]["selector"].get("statefulset.kubernetes.io/pod-name", "") for s in p2p_svcs)
            ok(pods == sorted(f"{fullname}-{i}" for i in range(replicas)), f"{label}: one Service per pod by name {pods}")
            for s in p2p_svcs:
                sp = s["spec"]
                protos = sorted((p["protocol"], p["port"]) for p in sp["ports"] if p["name"].startswith("p2p-"))
                ok(protos == [("TCP", port), ("UDP", port)], f"{label}: {s['metadata']['name']} ports {protos}")
                allocate = v["p2p"]["service"].get("allocateLoadBalancerNodePorts") if sp["type"] == "LoadBalancer" else None
                ok(sp.get("allocateLoadBalancerNodePorts") == allocate,
                   f"{label}: {s['metadata']['name']} allocateLoadBalancerNodePorts {sp.get('allocateLoadBalancerNodePorts')}, values {allocate}")
                ok(sp["type"] == v["p2p"]["service"]["type"], f"{label}: Service type")
                ok(sp.get("externalTrafficPolicy") == v["p2p"]["service"]["externalTrafficPolicy"], f"{label}: externalTrafficPolicy")
                ok(sp.get("publishNotReadyAddresses") is True, f"{label}: not-ready pods reachable (AutoNAT)")
            ok(not pod.get("hostNetwork") and "hostPort" not in ports["p2p-tcp"], f"{label}: no host networking")
        else:
            ok(not p2p_svcs, f"{label}: no p2p Services with {exposure}")
            ok(ports["p2p-tcp"].get("hostPort") == port and ports["p2p-quic"].get("hostPort") == port, f"{label}: hostPorts")
            ok(bool(pod.get("hostNetwork")) == (exposure == "hostNetwork"), f"{label}: hostNetwork")

        # The booster's heads: their whole port range published the way p2p.port is (not
        # with hostNetwork, where they listen on the node's addresses), named by head.
        booster = (values.get("config", {}).get("roles") or {}).get("booster")
        heads = head_ports(booster, BOOSTER_DEFAULTS) if isinstance(booster, dict) else set()
        base = min((p for _, p in heads), default=0)
        want_named = sorted((head_port_name(pr, p, base), pr, p) for pr, p in heads)
        for s in p2p_svcs:
            got = sorted((p["name"], p["protocol"], p["port"]) for p in s["spec"]["ports"] if not p["name"].startswith("p2p-"))
            ok(got == want_named, f"{label}: {s['metadata']['name']}: head ports {got[:4]}…, want {want_named[:4]}… ({len(got)}, want {len(want_named)})")
            ok(all(p["targetPort"] == p["port"] for p in s["spec"]["ports"] if not p["name"].startswith("p2p-")),
               f"{label}: {s['metadata']['name']}: each head port's targetPort is its port")
        head_cports = [p for p in main["ports"] if p["name"] not in ("p2p-tcp", "p2p-quic", "metrics", "admin")]
        got = sorted((p["name"], p["protocol"], p["containerPort"]) for p in head_cports)
        ok(got == (want_named if exposure == "hostPort" else []),
           f"{label}: head containerPorts {got[:4]}… ({len(got)}), want {len(want_named) if exposure == 'hostPort' else 0}")
        ok(all(p.get("hostPort") == p["containerPort"] for p in head_cports), f"{label}: each head containerPort bound as the same hostPort")
        names = [p["name"] for p in main["ports"]]
        ok(len(set(names)) == len(names) and all(len(n) <= 15 for n in names), f"{label}: container port names unique, at most 15 characters")
        published = set()
        if exposure == "service" and p2p_svcs:
            published = {(p["protocol"], p["port"]) for p in p2p_svcs[0]["spec"]["ports"] if not p["name"].startswith("p2p-")}
        elif exposure == "hostPort":
            published = {(p["protocol"], p["hostPort"]) for p in head_cports}

        # Addresses announced.
        configmap = [c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == fullname][0]
        config_path = env["PYLON_CONFIG"]["value"]
        lb_ips = v["p2p"]["service"]["loadBalancerIPs"] if exposure == "service" else []
        if lb_ips:
            ok(config_path == "/etc/pylon/$(POD_NAME).toml", f"{label}: per-pod config file")
            for i in range(replicas):
                doc = tomllib.loads(configmap["data"][f"{fullname}-{i}.toml"])
                ip = lb_ips[i]
                fam = "ip6" if ":" in ip else "ip4"
                ok(
                    doc["identify"]["announce"] == [f"/{fam}/{ip}/tcp/{port}", f"/{fam}/{ip}/udp/{port}/quic-v1"],
                    f"{label}: pod {i} announces its LoadBalancer IP",
                )
                svc = [s for s in p2p_svcs if s["metadata"]["name"].endswith(f"-p2p-{i}")][0]
                ok(svc["spec"].get("loadBalancerIP") == ip, f"{label}: Service {i} asks for {ip}")
        else:
            ok(config_path == "/etc/pylon/pylon.toml", f"{label}: shared config file")
        if v["announce"]["hostIP"]:
            ok(env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP", f"{label}: HOST_IP")
            ok(env["PYLON_IDENTIFY__ANNOUNCE"]["value"] == f"/ip4/$(HOST_IP)/tcp/{port},/ip4/$(HOST_IP)/udp/{port}/quic-v1",
               f"{label}: the node's IP announced")
        if v["announce"]["dnsDomain"]:
            d = v["announce"]["dnsDomain"]
            ok(env["PYLON_IDENTIFY__ANNOUNCE"]["value"] == f"/dns/$(POD_NAME).{d}/tcp/{port},/dns/$(POD_NAME).{d}/udp/{port}/quic-v1",
               f"{label}: the pod's DNS name announced")
            if exposure == "service":
                names = sorted(s["metadata"]["annotations"]["external-dns.alpha.kubernetes.io/hostname"] for s in p2p_svcs)
                ok(names == sorted(f"{fullname}-{i}.{d}" for i in range(replicas)), f"{label}: external-dns names {names}")

        # pylon.toml: exactly the values' config (plus `listen` on p2p.port when unset).
        doc = tomllib.loads(configmap["data"]["pylon.toml"])
        expected = copy.deepcopy(values.get("config", {}))
        expected.setdefault(
            "listen",
            [f"/ip4/0.0.0.0/tcp/{port}", f"/ip6/::/tcp/{port}", f"/ip4/0.0.0.0/udp/{port}/quic-v1", f"/ip6/::/udp/{port}/quic-v1"],
        )
        ok(same(doc, expected), f"{label}: pylon.toml is not the values' config one to one:\n{json.dumps(doc, indent=1)}\n!=\n{json.dumps(expected, indent=1)}")
        if self.pylon:
            self.binary(label, configmap, main, fullname, values, published if exposure != "hostNetwork" else None)

        # Pod disruption budget, network policy, monitoring.
        ok(("PodDisruptionBudget" in by_kind) == v["podDisruptionBudget"]["enabled"], f"{label}: PDB")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            sel = pdb["spec"]["selector"]["matchLabels"]
            ok(sel.items() <= spec["template"]["metadata"]["labels"].items(), f"{label}: PDB selects the pods")
        want_np = v["networkPolicy"]["enabled"] and exposure != "hostNetwork"
        ok(("NetworkPolicy" in by_kind) == want_np, f"{label}: NetworkPolicy")
        for np_ in by_kind.get("NetworkPolicy", []):
            rules = np_["spec"]["ingress"]
            p2p_rule = [r for r in rules if {p["port"] for p in r["ports"]} == {port} and not any("endPort" in p for p in r["ports"])]
            ok(len(p2p_rule) == 1 and "from" not in p2p_rule[0], f"{label}: p2p open to everyone")
            ok(
                sorted(p["protocol"] for p in p2p_rule[0]["ports"]) == ["TCP", "UDP"],
                f"{label}: p2p rule TCP and UDP",
            )
            head_rules = [r for r in rules if any("endPort" in p for p in r["ports"])]
            want_rules = []
            if heads:
                protocols = sorted({pr for pr, _ in heads})
                last = max(p for _, p in heads)
                want_rules = [{"ports": [{"port": base, "endPort": last, "protocol": pr} for pr in protocols]}]
            ok(head_rules == want_rules, f"{label}: NetworkPolicy head rule {head_rules}, want {want_rules}")
            for key, port_of, wanted in (("metricsFrom", v["metrics"]["port"], True), ("adminFrom", v["admin"]["port"], v["admin"]["expose"])):
                rule = [r for r in rules if {p["port"] for p in r["ports"]} == {port_of}]
                want = v["networkPolicy"][key] if wanted else []
                ok(
                    (rule[0]["from"] if rule else []) == want,
                    f"{label}: NetworkPolicy on port {port_of} lets in only {key}",
                )
        sm = by_kind.get("ServiceMonitor", [])
        ok(bool(sm) == v["metrics"]["serviceMonitor"]["enabled"], f"{label}: ServiceMonitor")
        for s in sm:
            sel = s["spec"]["selector"]["matchLabels"]
            ok(sel.items() <= headless["metadata"]["labels"].items(), f"{label}: ServiceMonitor selects the headless Service")
            ok(all(not sel.items() <= p["metadata"]["labels"].items() for p in p2p_svcs), f"{label}: and not the p2p ones")
            ok("metrics" in {p["name"] for p in headless["spec"]["ports"]}, f"{label}: headless Service has the metrics port")
        rules = by_kind.get("PrometheusRule", [])
        ok(bool(rules) == v["metrics"]["prometheusRule"]["enabled"], f"{label}: PrometheusRule")
        with open(os.path.join(ROOT, "ops", "alerts", "pylon.rules.yml")) as f:
            repo_rules = yaml.safe_load(f)
        for r in rules:
            ok(r["spec"]["groups"] == repo_rules["groups"], f"{label}: PrometheusRule is ops/alerts/pylon.rules.yml")
        dashboards = [c for c in by_kind["ConfigMap"] if "-dashboard-" in c["metadata"]["name"]]
        files = sorted(glob.glob(os.path.join(ROOT, "ops", "grafana", "*.json")))
        if v["metrics"]["dashboards"]["enabled"]:
            ok(len(dashboards) == len(files), f"{label}: one ConfigMap per ops/grafana dashboard ({len(dashboards)} != {len(files)})")
            for path in files:
                name = os.path.basename(path)
                found = [d for d in dashboards if name in d["data"]]
                with open(path) as f:
                    want = json.load(f)
                ok(len(found) == 1 and json.loads(found[0]["data"][name]) == want, f"{label}: dashboard {name}")
                for d in found:
                    ok(d["metadata"]["labels"].get("grafana_dashboard") == "1", f"{label}: {name} labelled for the sidecar")
        else:
            ok(not dashboards, f"{label}: no dashboards unless asked")

    def booster_defaults(self) -> dict | None:
        """The binary's defaults of [roles.booster]: the commented-out block of the config
        `pylon init` writes (its embedded default.toml, which pylon/src/config_docs.rs holds
        to Config::default). `pylon config` prints only the role keys a config sets."""
        if self._booster_defaults is None:
            with tempfile.TemporaryDirectory() as d:
                out = os.path.join(d, "pylon.toml")
                run = subprocess.run(
                    [self.pylon, "init", "--data-dir", os.path.join(d, "data"), "--output", out],
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": d},
                    capture_output=True, text=True, timeout=60,
                )
                if not self.ok(run.returncode == 0, f"`pylon init` failed: {run.stderr.strip()}"):
                    return None
                with open(out) as f:
                    lines = f.read().splitlines()
            block = {}
            if "# [roles.booster]" in lines:
                for line in lines[lines.index("# [roles.booster]") + 1:]:
                    try:
                        doc = tomllib.loads(line.removeprefix("# ")) if line.startswith("# ") else {}
                    except tomllib.TOMLDecodeError:
                        doc = {}
                    if len(doc) != 1:
                        break
                    block.update(doc)
            missing = sorted(set(BOOSTER_DEFAULTS) - set(block))
            if not self.ok(not missing, f"the config `pylon init` writes documents no default for roles.booster {missing}"):
                return None
            self._booster_defaults = block
            self.ok({k: block[k] for k in BOOSTER_DEFAULTS} == BOOSTER_DEFAULTS,
                    f"the chart's booster defaults {BOOSTER_DEFAULTS} (chart.py, and pylon.booster in _helpers.tpl) "
                    f"are not the binary's {({k: block[k] for k in BOOSTER_DEFAULTS})}")
        return self._booster_defaults

    def binary(self, label, configmap, main, fullname, values, published) -> None:
        """The real binary reads the rendered config with the pod's PYLON_* environment;
        `published`: the booster's (protocol, port) the chart publishes (None: nothing to
        publish, hostNetwork)."""
        fake = {"POD_NAME": f"{fullname}-0", "HOST_IP": "192.0.2.10", "POD_IP": "10.1.2.3"}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
        for e in main["env"]:
            if "value" in e and e["name"].startswith("PYLON_"):
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: fake[m.group(1)], e["value"])
        with tempfile.TemporaryDirectory() as d:
            for key, text in configmap["data"].items():
                with open(os.path.join(d, key), "w") as f:
                    f.write(text)
            env["PYLON_CONFIG"] = os.path.join(d, os.path.basename(env["PYLON_CONFIG"]))
            run = subprocess.run([self.pylon, "config"], env=env, capture_output=True, text=True, timeout=60)
            if not self.ok(run.returncode == 0, f"{label}: `pylon config` refused the rendered config: {run.stderr.strip()}"):
                return
            merged = tomllib.loads(run.stdout)
            named = set(values.get("config", {}).get("roles", {}) or {})
            roles = set(merged.get("roles", {}))
            if named:
                self.ok(roles == named, f"{label}: the node runs {sorted(roles)}, the values asked for {sorted(named)}")
            else:
                profile = values.get("config", {}).get("profile")
                base = subprocess.run(
                    [self.pylon, "config"] + (["--profile", profile] if profile else []),
                    env={"PATH": env["PATH"], "HOME": env["HOME"]}, capture_output=True, text=True, timeout=60,
                )
                default_roles = set(tomllib.loads(base.stdout).get("roles", {})) if base.returncode == 0 else None
                self.ok(roles == default_roles, f"{label}: no role named: the node runs the embedded default's {default_roles}, not {sorted(roles)}")
            self.ok(merged.get("data_dir") == "/var/lib/pylon", f"{label}: the binary's data_dir")
            booster = merged.get("roles", {}).get("booster")
            if booster is not None and published is not None and (defaults := self.booster_defaults()):
                listens = head_ports(booster, defaults)
                span = f"{min(p for _, p in listens)}-{max(p for _, p in listens)}" if listens else "none"
                self.ok(published == listens,
                        f"{label}: the chart publishes {len(published)} head ports, the binary's heads listen on "
                        f"{len(listens)} ({span}, {sorted({pr for pr, _ in listens})})")
            self.ok(merged["metrics"]["listen"] == env["PYLON_METRICS__LISTEN"], f"{label}: the binary's metrics.listen")

    # ---- bad values --------------------------------------------------------------------
    def bad_values(self, path: str) -> None:
        label = os.path.relpath(path, ROOT)
        with open(path) as f:
            text = f.read()
        expect = re.findall(r"^# expect: (.+)$", text, re.M)
        by = (re.findall(r"^# refused-by: (\w+)$", text, re.M) or ["schema"])[0]
        if not self.ok(len(expect) == 1, f"{label}: needs one `# expect:` line"):
            return
        values = yaml.safe_load(text) or {}
        try:
            with quiet_stderr():
                self.chart.validate_schema(values)
            schema_error = None
        except helm.HelmValuesError as e:
            schema_error = str(e)
        if by == "schema":
            self.ok(schema_error is not None and expect[0] in schema_error,
                    f"{label}: the schema should refuse it with {expect[0]!r}, said {schema_error!r}")
            return
        self.ok(schema_error is None, f"{label}: passes the schema, refused by the templates ({schema_error})")
        try:
            render(self.chart, values)
            self.ok(False, f"{label}: rendered, should be refused with {expect[0]!r}")
        except helm.HelmError as e:
            self.ok(expect[0] in str(e), f"{label}: refused with {str(e)!r}, expected {expect[0]!r}")

    # ---- the schema's config against Pylon's keys --------------------------------------
    def schema_keys(self) -> None:
        with open(os.path.join(CHART, "values.schema.json")) as f:
            schema = json.load(f)

        def leaves(node, prefix=""):
            props = node.get("properties")
            if node.get("type") == "object" and props is not None:
                out = {prefix} if prefix else set()
                for k, sub in props.items():
                    out |= leaves(sub, f"{prefix}.{k}" if prefix else k)
                return out
            return {prefix}

        keys = leaves(schema["properties"]["config"])
        every = load_values(os.path.join(HERE, "values", "every-key.yaml"))["config"]

        def value_leaves(node, prefix=""):
            out = {prefix} if prefix else set()
            if isinstance(node, dict):
                for k, sub in node.items():
                    out |= value_leaves(sub, f"{prefix}.{k}" if prefix else k)
            return out

        missing = sorted(keys - value_leaves(every))
        self.ok(not missing, f"helm/tests/values/every-key.yaml lacks schema keys {missing}")
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
        documented = set()
        for line in section.splitlines():
            if line.startswith("| `"):
                first = line.split("|")[1]
                for tok in re.findall(r"`([^`]+)`", first):
                    documented.add(tok.strip("[]"))
        self.ok(len(documented) > 50, f"README.md's configuration table: only {len(documented)} keys found")
        unknown = sorted(documented - keys - CHART_OWNED)
        self.ok(not unknown, f"README.md documents config keys values.schema.json lacks: {unknown} "
                             "(add them under config in helm/pylon/values.schema.json and to helm/tests/values/every-key.yaml)")
        mentioned = set(re.findall(r"`\[?([a-z_][a-z0-9_.]*)\]?`", readme))
        # Keys, not sections (a section is documented through its keys).
        sections = {k for k in keys if any(o.startswith(k + ".") for o in keys)}
        undocumented = sorted(k for k in keys - sections if k not in mentioned)
        self.ok(not undocumented, f"values.schema.json allows config keys README.md never names: {undocumented}")

    # ---- files shared with ops/, and the packaged chart ---------------------------------
    def shared_files(self) -> None:
        for link, target in (("files/pylon.rules.yml", "ops/alerts/pylon.rules.yml"), ("files/dashboards", "ops/grafana")):
            path = os.path.join(CHART, link)
            self.ok(
                os.path.islink(path) and os.path.realpath(path) == os.path.realpath(os.path.join(ROOT, target)),
                f"helm/pylon/{link} must be a link to {target}, not a copy",
            )
        with tempfile.TemporaryDirectory() as d, quiet_stderr():
            archive = helm.package(CHART, destination=d)
            with helm.Chart.load(archive) as packed:
                names = {f["name"] for f in packed.files}
        want = {"files/pylon.rules.yml"} | {
            f"files/dashboards/{os.path.basename(p)}" for p in glob.glob(os.path.join(ROOT, "ops", "grafana", "*.json"))
        }
        self.ok(want <= names, f"the packaged chart lacks {sorted(want - names)}")
        self.ok(not [n for n in names if n.endswith(".py")], f"the packaged chart carries scripts: {sorted(n for n in names if n.endswith('.py'))}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="check", choices=["check", "render"])
    p.add_argument("--values", help="render: a values file (default: the chart's defaults)")
    p.add_argument("--pylon", help="check: the pylon binary, to read every rendered config")
    args = p.parse_args()

    if args.command == "render":
        chart = load_chart()
        try:
            rendered = render(chart, load_values(args.values))
        except helm.HelmError as e:
            print(f"helm chart: {e}", file=sys.stderr)
            return 1
        sys.stdout.write(manifest_text(rendered))
        return 0

    if args.pylon and not os.access(args.pylon, os.X_OK):
        print(f"helm chart: --pylon {args.pylon}: not an executable", file=sys.stderr)
        return 1
    c = Checks(args.pylon)
    c.lint("defaults", None)
    c.shared_files()
    c.schema_keys()
    value_sets = sorted(glob.glob(os.path.join(HERE, "values", "*.yaml")))
    for path in value_sets:
        c.value_set(path)
    bad = sorted(glob.glob(os.path.join(HERE, "bad-values", "*.yaml")))
    for path in bad:
        c.bad_values(path)
    binary = "read by the pylon binary" if args.pylon else "NOT read by the binary (no --pylon)"
    summary = (f"helm chart: {c.passed} checks passed, {len(c.failures)} failed "
               f"({len(value_sets)} value sets, kubernetes-validate --strict {KUBE_VERSION}, "
               f"configs {binary}; {len(bad)} bad values files refused)")
    print(summary)
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
