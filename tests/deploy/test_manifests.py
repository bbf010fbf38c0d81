#!/usr/bin/env python3
"""Offline tests of the Kubernetes manifests in deploy/ (docs/scale-out.md).

For every overlay in deploy/overlays/ it renders the Kustomize tree (tests/deploy/kustomize_lite.py,
no kustomize binary needed), validates every object against the Kubernetes OpenAPI schemas with
kubernetes-validate (strict: unknown fields are errors) for each version in K8S_VERSIONS, and
checks the deployment policy: the right Kata runtime class, GPU and NVSwitch counts, the image
pinned by digest, nothing privileged, resource limits everywhere, gRPC probes, Prometheus scrape
settings, a StatefulSet governed by a headless Service, the measured initdata with the Kata agent
policy, the model fetched in the confidential VM and pinned by digest, no service-account token,
and only `veil` flags that exist (read from src/cli/). Key-aware routing: every replica gets
`--replica-name` from its pod name and `--replicas` from the mounted registry ConfigMap, which
lists exactly the StatefulSet's pods at their headless-Service names (with the name and URL rules
of src/registry.rs); the gateway Deployment (outside the confidential VMs: no runtime class is
required of it) meets the same hardening rules, runs `veil gateway-config` with flags that exist
on that registry, feeds nginx consistently, and the NetworkPolicies admit the replicas' gRPC from
the gateway only. The gateway's scripts compile, rounds of its configuration loop run against a
fake `veil` and a fake DNS, and, where nginx is installed, its nginx script runs a real nginx
(skipped otherwise). It then breaks a rendered overlay in many ways and checks that each break
is caught.

    python3 -m pip install --user kubernetes-validate==1.37.0     # once (scripts/check-deploy.sh)
    python3 tests/deploy/test_manifests.py [--require-pinned]

--require-pinned additionally refuses the placeholders (image digests of zeros, the baseline
agent policy, the example KBS URL): run it on your own overlay before `kubectl apply -k`.
Exits non-zero on any failure; the last line reads "N passed, N failed".
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import gzip
import io
import ipaddress
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import types

try:
    import tomllib
except ImportError:
    sys.exit("tests/deploy/test_manifests.py needs Python 3.11 or newer (tomllib)")

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, str(ROOT / "tests" / "deploy"))

import kustomize_lite  # noqa: E402

try:
    import kubernetes_validate
except ImportError:
    sys.exit("kubernetes-validate is missing: python3 -m pip install --user kubernetes-validate==1.37.0")

KUBERNETES_VALIDATE_VERSION = "1.37.0"
# The oldest Kubernetes these manifests support (gRPC probes are GA since 1.27) and the newest
# schema kubernetes-validate 1.37.0 ships.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Objects of CRDs: not in the Kubernetes schemas; checked structurally below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

INITDATA = "io.katacontainers.config.hypervisor.cc_init_data"
LEGACY_POLICY = "io.katacontainers.config.agent.policy"
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
PLACEHOLDER_POLICY = "VEIL-PLACEHOLDER-POLICY"
PLACEHOLDER_KBS = "kbs.example"

# The gateway (deploy/base/gateway-*.yaml).
GATEWAY = "veil-gateway"
# What $(VAR) of an env var set from the pod's name (fieldRef metadata.name) stands for here.
POD_NAME_REF = "<the pod's name>"
FIELD_REFS = {"metadata.name": POD_NAME_REF}

OVERLAYS = {
    "tdx": dict(runtime="kata-qemu-nvidia-gpu-tdx", pgpu=1, nvswitch=None, algorithm="sha384", cc_mode="on"),
    "snp": dict(runtime="kata-qemu-nvidia-gpu-snp", pgpu=1, nvswitch=None, algorithm="sha256", cc_mode="on"),
    "tdx-8gpu-ppcie": dict(runtime="kata-qemu-nvidia-gpu-tdx", pgpu=8, nvswitch=4, algorithm="sha384", cc_mode="ppcie"),
    "snp-8gpu-ppcie": dict(runtime="kata-qemu-nvidia-gpu-snp", pgpu=8, nvswitch=4, algorithm="sha256", cc_mode="ppcie"),
}


# ---------------------------------------------------------------------------------------------
# `veil` command lines: the flags come from the Rust sources, so a manifest cannot use a flag
# the binary does not have.

def rust_struct_fields(path: pathlib.Path, struct: str) -> list[tuple[str, str, bool]]:
    """(field name, type, flattened) of a clap Args struct."""
    text = path.read_text()
    m = re.search(r"pub\(crate\) struct " + struct + r" \{(.*?)\n\}", text, re.S)
    if not m:
        raise AssertionError(f"struct {struct} not found in {path}")
    fields, flatten = [], False
    for line in m.group(1).splitlines():
        line = line.strip()
        if line.startswith("#[command(flatten)]"):
            flatten = True
        fm = re.match(r"(?:pub\(crate\) )?(\w+): (.+),$", line)
        if fm:
            fields.append((fm.group(1), fm.group(2), flatten))
            flatten = False
    return fields


def serve_flags() -> dict[str, bool]:
    """--flag -> takes a value, for `veil serve`."""
    flags: dict[str, bool] = {}
    for name, ty, flat in rust_struct_fields(ROOT / "src/cli/serve.rs", "ServeArgs"):
        if flat:
            for n2, t2, _ in rust_struct_fields(ROOT / "src/cli/model.rs", ty):
                flags["--" + n2.replace("_", "-")] = t2 != "bool"
        else:
            flags["--" + name.replace("_", "-")] = ty != "bool"
    return flags


def gateway_config_flags() -> dict[str, bool]:
    """--flag -> takes a value, for `veil gateway-config`."""
    return {"--" + name.replace("_", "-"): ty != "bool"
            for name, ty, _ in rust_struct_fields(ROOT / "src/cli/gateway/mod.rs", "GatewayArgs")}


def parse_flags(args: list[str], known: dict[str, bool], cmd: str = "veil serve") -> dict[str, object]:
    out: dict[str, object] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise AssertionError(f"unexpected argument {a!r}")
        name, _, value = a.partition("=")
        if name not in known:
            raise AssertionError(f"`{cmd}` has no flag {name}")
        if known[name]:
            if not value:
                i += 1
                if i >= len(args):
                    raise AssertionError(f"{name} needs a value")
                value = args[i]
            out[name] = value
        else:
            out[name] = True
        i += 1
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion in command and args."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in env:
            raise AssertionError(f"$({m.group(1)}) is not defined in the container's environment")
        return env[m.group(1)]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def container_env(c: dict, objs: list[dict], problems: list[str] | None = None) -> dict[str, str]:
    """The container's environment; a variable from the pod's name reads POD_NAME_REF. A
    variable from anything else raises AssertionError, or with `problems`, is reported there and
    reads "<invalid>"."""
    env: dict[str, str] = {}
    for ef in c.get("envFrom", []):
        ref = ef.get("configMapRef", {}).get("name")
        cm = find(objs, "ConfigMap", ref)
        assert cm is not None, f"container {c['name']}: envFrom ConfigMap {ref} is not in the overlay"
        env.update(cm.get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        vf = e.get("valueFrom", {})
        path = vf.get("fieldRef", {}).get("fieldPath")
        if set(vf) == {"fieldRef"} and path in FIELD_REFS:
            env[e["name"]] = FIELD_REFS[path]
            continue
        msg = (f"container {c['name']}: env {e['name']} must be a literal value or the pod's name "
               f"(fieldRef {', '.join(FIELD_REFS)}), not {vf}")
        if problems is None:
            raise AssertionError(msg)
        problems.append(msg)
        env[e["name"]] = "<invalid>"
    return env


def mounted_configmap_file(c: dict, volumes: dict, objs: list[dict], path: str) -> tuple[str, str, str | None]:
    """(ConfigMap name, key, content) of the file `path` in container `c`, which must come from
    a read-only ConfigMap volume; raises AssertionError otherwise."""
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if not path.startswith(mp + "/") or m.get("subPath"):
            continue
        rel = path[len(mp) + 1:]
        ref = volumes.get(m["name"], {}).get("configMap")
        assert ref is not None, f"container {c['name']}: {path} is not on a ConfigMap volume"
        assert m.get("readOnly") is True, f"container {c['name']}: mount the ConfigMap volume of {path} read-only"
        items = ref.get("items")
        key = rel if items is None else next((i["key"] for i in items if i["path"] == rel), None)
        assert key is not None, f"container {c['name']}: {path} is not among the items of ConfigMap {ref.get('name')}"
        cm = find(objs, "ConfigMap", ref.get("name"))
        assert cm is not None, f"container {c['name']}: ConfigMap {ref.get('name')} (of {path}) is not in the overlay"
        return ref["name"], key, cm.get("data", {}).get(key)
    raise AssertionError(f"container {c['name']}: {path} is on no mounted volume")


def mounted_volume(c: dict, path: str) -> tuple[str, str] | None:
    """(volume name, path inside it) of `path` in container `c`."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[2]):
                best = (m["name"], path[len(mp):].lstrip("/"), mp)
    return None if best is None else (best[0], best[1])


# The registry rules of src/registry.rs and veil_proto::routing::valid_replica_name: what
# `veil serve --replicas` and `veil gateway-config --replicas` accept.

def valid_replica_name(name: str) -> bool:
    return (0 < len(name) <= 63 and name.isascii() and name[0].isalnum()
            and all(ch.isalnum() or ch in "._-" for ch in name))


def valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return True
        except ValueError:
            return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    return (0 < len(host) <= 253 and host.isascii() and all(
        0 < len(label) <= 63 and not label.startswith("-") and not label.endswith("-")
        and all(ch.isalnum() or ch == "-" for ch in label) for label in host.split(".")))


def parse_registry_url(url: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` or `http://HOST:PORT`; raises ValueError like veil does."""
    rest = url
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme != "http":
            raise ValueError(f"scheme {scheme!r} is not supported (http://HOST:PORT)")
    host, sep, port = rest.rpartition(":")
    if not sep:
        raise ValueError("no port")
    if not port or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("bad port")
    if not valid_host(host):
        raise ValueError("invalid host")
    return host, int(port)


def named_port(c: dict, port) -> int | None:
    """The container port `port` (a number or a port name) names."""
    for p in c.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None


# ---------------------------------------------------------------------------------------------

def find(objs: list[dict], kind: str, name: str | None = None) -> dict | None:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return hits[0] if len(hits) == 1 else None


def decode_initdata(value: str) -> bytes:
    return gzip.decompress(base64.b64decode(value, validate=True))


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def check_schema(objs: list[dict]) -> list[str]:
    errors = []
    for o in objs:
        if (o["apiVersion"], o["kind"]) in CRD_KINDS:
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(copy.deepcopy(o), v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                errors.append(f"{o['kind']}/{o['metadata']['name']} (Kubernetes {v}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{o['kind']}/{o['metadata']['name']}: {e.message}")
    return errors


def selects(selector: dict, labels: dict) -> bool:
    """Whether a matchLabels selector selects pods labelled `labels` (an empty one selects all)."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_pod_hardening(objs: list[dict], pod: dict, what: str, need, require_pinned: bool) -> dict:
    """The rules every pod of the deployment meets (the engine's and the gateway's); returns
    its volumes by name."""
    for host in ["hostNetwork", "hostPID", "hostIPC"]:
        need(not pod.get(host), f"{what}: {host} must not be set")
    need(pod.get("automountServiceAccountToken") is False, f"{what}: automountServiceAccountToken must be false")
    sa = find(objs, "ServiceAccount", pod.get("serviceAccountName"))
    need(sa is not None and sa.get("automountServiceAccountToken") is False,
         f"{what}: the pod's ServiceAccount must exist with automountServiceAccountToken: false")
    psc = pod.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, f"{what}: pod securityContext.runAsNonRoot must be true")
    need(psc.get("runAsUser", 0) != 0, f"{what}: pod securityContext.runAsUser must be set and not 0")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{what}: pod seccompProfile must be RuntimeDefault")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for v in volumes.values():
        kinds = set(v) - {"name"}
        need(kinds <= {"emptyDir", "configMap"},
             f"{what}: volume {v['name']}: only emptyDir and configMap volumes are allowed, not {sorted(kinds)}")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        name = f"{what}: container {c['name']}"
        need(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", c.get("image", "")) is not None,
             f"{name}: image must be pinned by digest (@sha256:<64 hex>), is {c.get('image')!r}")
        if require_pinned:
            need(not c.get("image", "").endswith(PLACEHOLDER_DIGEST), f"{name}: placeholder image digest")
        sc = c.get("securityContext", {})
        need(sc.get("privileged") is not True, f"{name}: privileged")
        need(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation must be false")
        need(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem must be true")
        need("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: capabilities must drop ALL")
        need(not sc.get("capabilities", {}).get("add"), f"{name}: no capabilities may be added")
        need(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot must be true")
        need(sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, f"{name}: must not run as UID 0")
        need(sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault",
             f"{name}: seccompProfile must be RuntimeDefault")
        res = c.get("resources", {})
        for r in ["cpu", "memory", "ephemeral-storage"]:
            need(r in res.get("limits", {}), f"{name}: resources.limits.{r} is missing")
            need(r in res.get("requests", {}), f"{name}: resources.requests.{r} is missing")
        for p in c.get("ports", []):
            need("hostPort" not in p, f"{name}: hostPort")
        for m in c.get("volumeMounts", []):
            need(m["name"] in volumes, f"{name}: mounts unknown volume {m['name']}")
    return volumes


def check_registry(objs: list[dict], sts: dict, main: dict, flags: dict, volumes: dict, need) -> tuple[str, str] | None:
    """`veil serve --replica-name $(POD_NAME) --replicas FILE`, FILE from a ConfigMap listing
    exactly the StatefulSet's pods at their headless-Service names; returns (ConfigMap, key)."""
    need(flags.get("--replica-name") == POD_NAME_REF,
         "veil serve: --replica-name must be $(POD_NAME) with POD_NAME from fieldRef metadata.name "
         "(a pod's name is its name in the registry)")
    need("--replica" not in flags, "veil serve: list the replicas in the registry ConfigMap, not with --replica")
    path = flags.get("--replicas")
    if not isinstance(path, str) or not path.startswith("/"):
        need(False, "veil serve: --replicas must name the registry file, mounted from its ConfigMap")
        return None
    try:
        cm, key, text = mounted_configmap_file(main, volumes, objs, path)
    except AssertionError as e:
        need(False, f"veil serve --replicas {path}: {e}")
        return None
    if text is None:
        need(False, f"veil serve --replicas {path}: ConfigMap {cm} has no key {key}")
        return None
    what = f"the registry (ConfigMap {cm}, {key})"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        need(False, f"{what} is not TOML: {e}")
        return None
    entries = doc.get("replica", [])
    if set(doc) - {"replica"} or not isinstance(entries, list):
        need(False, f"{what}: only [[replica]] tables are allowed (veil refuses anything else)")
        return None
    sts_name = sts["metadata"]["name"]
    count = sts["spec"].get("replicas", 1)
    want = [f"{sts_name}-{i}" for i in range(count)]
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    need(names == want, f"{what} must list exactly the StatefulSet's pods {want}, in order; it lists {names} "
         "(python3 deploy/scripts/registry.py encode DIR after changing replicas)")
    lowered = [str(n).lower() for n in names]
    need(len(set(lowered)) == len(lowered), f"{what}: a name appears twice (ignoring case)")
    svc = sts["spec"].get("serviceName")
    ns = sts["metadata"].get("namespace")
    headless = find(objs, "Service", svc)
    grpc_port = next((p["port"] for p in (headless or {}).get("spec", {}).get("ports", []) if p.get("name") == "grpc"), None)
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != {"name", "url"}:
            need(False, f"{what}: replica[{i}] must have exactly `name` and `url`")
            continue
        name, url = str(e["name"]), str(e["url"])
        need(valid_replica_name(name), f"{what}: invalid name {name!r} (veil refuses it)")
        try:
            host, port = parse_registry_url(url)
        except ValueError as err:
            need(False, f"{what}: {name}: URL {url!r}: {err} (veil refuses it)")
            continue
        pod_host = f"{name}.{svc}.{ns}.svc"
        need(host == pod_host or host.startswith(pod_host + "."),
             f"{what}: {name}: URL {url!r} must name the pod under the headless Service: {pod_host}")
        need(port == grpc_port, f"{what}: {name}: URL port {port} is not the headless Service's grpc port {grpc_port}")
    return cm, key


def check_network_policies(objs: list[dict], replica_labels: dict, grpc_port, gateway_labels: dict | None, need) -> None:
    """The replicas accept gRPC from the gateway pods only and metrics from a named peer; the
    gateway reaches DNS and the replicas' gRPC port."""
    nps = [o for o in objs if o["kind"] == "NetworkPolicy"]
    replica_nps = [n for n in nps if selects(n["spec"].get("podSelector", {}).get("matchLabels"), replica_labels)]
    need(bool(replica_nps), "a NetworkPolicy must select the replica pods")
    for n in replica_nps:
        name = n["metadata"]["name"]
        for rule in n["spec"].get("ingress", []):
            ports = rule.get("ports")
            covered = {p.get("port") for p in ports} if ports is not None else None
            peers = rule.get("from")
            if gateway_labels is not None and (covered is None or covered & {"grpc", grpc_port}):
                ok = bool(peers) and all(
                    set(p) == {"podSelector"} and p["podSelector"].get("matchLabels")
                    and selects(p["podSelector"]["matchLabels"], gateway_labels) for p in peers)
                need(ok, f"NetworkPolicy {name}: the replicas' gRPC port must admit the gateway pods only "
                         f"(a podSelector of {GATEWAY}'s labels), not {peers if peers else 'anyone'}")
            if covered is None or covered & {"metrics", 9090}:
                need(bool(peers), f"NetworkPolicy {name}: the metrics port must name who may scrape it, not anyone")
    if gateway_labels is None:
        return
    gw_nps = [n for n in nps if selects(n["spec"].get("podSelector", {}).get("matchLabels"), gateway_labels)]
    need(bool(gw_nps), f"a NetworkPolicy must select the {GATEWAY} pods")
    for n in gw_nps:
        if "Egress" not in n["spec"].get("policyTypes", []):
            continue
        rules = n["spec"].get("egress", [])

        def allows(port, to_replicas: bool) -> bool:
            for r in rules:
                ports = r.get("ports")
                if ports is not None and not any(p.get("port") in port for p in ports):
                    continue
                peers = r.get("to")
                if not peers or not to_replicas or any(
                        set(p) == {"podSelector"} and selects(p["podSelector"].get("matchLabels"), replica_labels)
                        for p in peers):
                    return True
            return False

        need(allows({53}, False), f"NetworkPolicy {n['metadata']['name']}: the gateway needs DNS (port 53)")
        need(allows({"grpc", grpc_port}, True),
             f"NetworkPolicy {n['metadata']['name']}: the gateway must reach the replicas' gRPC port")


def script_errors(name: str, text: str | None) -> list[str]:
    """Syntax errors of a gateway script (Python by compile(), shell by `sh -n`)."""
    if text is None:
        return [f"the gateway script {name} is missing"]
    if name.endswith(".py"):
        try:
            compile(text, name, "exec")
        except SyntaxError as e:
            return [f"{name} does not compile: {e}"]
    elif name.endswith(".sh") and shutil.which("sh"):
        r = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
        if r.returncode != 0:
            return [f"{name}: sh -n: {r.stderr.strip()}"]
    return []


def check_gateway(objs: list[dict], sts: dict, main: dict, registry: tuple[str, str] | None,
                  require_pinned: bool, need) -> None:
    """The gateway Deployment: hardened like the engine (no runtime class required: it runs
    outside the confidential VMs and sees only ciphertext), its `config` container runs
    `veil gateway-config` of the engine image on the replicas' registry and feeds the nginx
    container the file it reads, with the same run directory and listen port; a Service."""
    dep = find(objs, "Deployment", GATEWAY)
    if dep is None:
        need(False, f"the gateway Deployment {GATEWAY} is missing")
        return
    what = f"Deployment {GATEWAY}"
    tmpl = dep["spec"]["template"]
    pod = tmpl["spec"]
    labels = tmpl["metadata"].get("labels", {})
    sel = dep["spec"].get("selector", {}).get("matchLabels", {})
    need(bool(sel) and selects(sel, labels), f"{what}: selector must match the pod labels")
    volumes = check_pod_hardening(objs, pod, what, need, require_pinned)
    containers = pod.get("containers", [])
    for c in containers:
        name = f"{what}: container {c['name']}"
        need("livenessProbe" in c, f"{name}: a livenessProbe is required")
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
            p = c.get(probe)
            if p is None:
                continue
            for kind in ("tcpSocket", "grpc", "httpGet"):
                if kind in p:
                    need(named_port(c, p[kind].get("port")) is not None,
                         f"{name}: {probe} probes {p[kind].get('port')!r}, not a port of the container")
        if c.get("ports"):
            for probe in ["readinessProbe", "livenessProbe"]:
                p = c.get(probe, {})
                need("tcpSocket" in p or "grpc" in p, f"{name}: {probe} must be a TCP or gRPC probe on its port")

    # The config container: `generate.py ... -- veil gateway-config ...` in the engine image.
    gens, nginxes = [], [c for c in containers if c.get("ports")]
    for c in containers:
        try:
            env = container_env(c, objs)
            args = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
        except AssertionError as e:
            need(False, f"{what}: {e}")
            continue
        if "--" in args and args[args.index("--") + 1:][:2] == ["veil", "gateway-config"]:
            gens.append((c, args))
    need(len(gens) == 1, f"{what}: exactly one container must run the loop `generate.py ... -- veil gateway-config ...`")
    need(len(nginxes) == 1, f"{what}: exactly one container (nginx) must serve a port")
    if len(gens) != 1 or len(nginxes) != 1:
        return
    (gen, args), nginx = gens[0], nginxes[0]
    gname, nname = f"{what}: container {gen['name']}", f"{what}: container {nginx['name']}"
    need(gen.get("image") == main.get("image"), f"{gname}: must run the engine image (the StatefulSet's {main.get('image')})")
    sep = args.index("--")
    loop, gc = args[:sep], args[sep + 3:]
    try:
        gflags = parse_flags(gc, gateway_config_flags(), "veil gateway-config")
    except AssertionError as e:
        need(False, f"{gname}: {e}")
        return
    need(gflags.get("--format") == "nginx", f"{gname}: veil gateway-config --format must be nginx")
    for own in ("--replicas", "--replica", "--out"):
        need(own not in gflags, f"{gname}: veil gateway-config {own} is set by the loop (the replicas that resolve)")

    # The loop's options and its script.
    scripts: dict[str, str | None] = {}
    need(loop[:1] == ["python3"] and len(loop) >= 2, f"{gname}: must run `python3 <generate.py>`")
    opts: dict[str, str] = {}
    rest = loop[2:]
    for i in range(0, len(rest) - 1, 2):
        opts[rest[i]] = rest[i + 1]
    need(len(rest) % 2 == 0 and set(opts) <= {"--registry", "--publish", "--interval", "--heartbeat", "--timeout", "--work"},
         f"{gname}: unknown options of generate.py: {rest}")
    if len(loop) >= 2:
        try:
            _, key, text = mounted_configmap_file(gen, volumes, objs, loop[1])
            scripts[key] = text
            need(key == "generate.py", f"{gname}: {loop[1]} must be the ConfigMap's generate.py")
        except AssertionError as e:
            need(False, f"{gname}: {e}")
    try:
        cm, key, _ = mounted_configmap_file(gen, volumes, objs, opts.get("--registry", ""))
        if registry is not None:  # else the replicas' registry is at fault, and reported
            need((cm, key) == registry, f"{gname}: --registry must be the replicas' registry "
                 f"({registry[0]}/{registry[1]}), is {cm}/{key}")
    except AssertionError as e:
        need(False, f"{gname}: --registry: {e}")

    # nginx: its script, the run directory, the port, the published file.
    ncmd = nginx.get("command", []) + nginx.get("args", [])
    need(ncmd[:1] == ["sh"] and len(ncmd) == 2, f"{nname}: must run `sh <nginx-run.sh>`")
    if len(ncmd) == 2:
        try:
            _, key, text = mounted_configmap_file(nginx, volumes, objs, ncmd[1])
            scripts[key] = text
            need(key == "nginx-run.sh", f"{nname}: {ncmd[1]} must be the ConfigMap's nginx-run.sh")
        except AssertionError as e:
            need(False, f"{nname}: {e}")
    for key, text in scripts.items():
        for err in script_errors(key, text):
            need(False, f"{what}: {err}")
    try:
        nenv = container_env(nginx, objs)
    except AssertionError as e:
        need(False, f"{what}: {e}")
        nenv = {}
    run_dir = gflags.get("--run-dir")
    need(isinstance(run_dir, str) and nenv.get("RUN_DIR") == run_dir,
         f"{gname}: veil gateway-config --run-dir ({run_dir}) must be nginx's RUN_DIR ({nenv.get('RUN_DIR')})")
    run_mount = next((m for m in nginx.get("volumeMounts", []) if m["mountPath"].rstrip("/") == str(run_dir).rstrip("/")), None)
    need(run_mount is not None and not run_mount.get("readOnly") and "emptyDir" in volumes.get(run_mount["name"], {}),
         f"{nname}: the run directory {run_dir} must be a writable emptyDir mount")
    listen = str(gflags.get("--listen", "0.0.0.0:50051"))
    try:
        port = listen_port(listen)
    except (ValueError, IndexError):
        port = None
    grpc = named_port(nginx, "grpc")
    need(grpc is not None and port == grpc, f"{gname}: veil gateway-config --listen {listen} must use nginx's grpc port {grpc}")
    need(not listen.startswith("127."), f"{gname}: --listen must not be loopback-only in a pod")
    need(nenv.get("LISTEN") == listen, f"{nname}: LISTEN ({nenv.get('LISTEN')}) must be the --listen of veil gateway-config ({listen})")
    published = mounted_volume(gen, opts.get("--publish", ""))
    read = mounted_volume(nginx, nenv.get("CONFIG", ""))
    need(published is not None and published == read and "emptyDir" in volumes.get(published[0], {}),
         f"{what}: nginx's CONFIG ({nenv.get('CONFIG')}) must be the file the loop publishes "
         f"({opts.get('--publish')}) on a shared emptyDir")
    if published:
        need(any(m["name"] == published[0] and not m.get("readOnly") for m in gen.get("volumeMounts", [])),
             f"{gname}: must mount {published[0]} writable")

    # The Service clients use.
    svc = find(objs, "Service", GATEWAY)
    need(svc is not None, f"the Service {GATEWAY} is missing")
    if svc:
        ssel = svc["spec"].get("selector", {})
        need(bool(ssel) and selects(ssel, labels), f"Service {GATEWAY} must select the gateway pods")
        sp = {p.get("name"): p for p in svc["spec"].get("ports", [])}
        need("grpc" in sp and named_port(nginx, sp["grpc"].get("targetPort", sp["grpc"].get("port"))) == grpc,
             f"Service {GATEWAY}: its grpc port must target nginx's grpc port")


def check_policy(objs: list[dict], expect: dict, require_pinned: bool) -> list[str]:
    """The deployment rules; returns the violations (empty when all hold)."""
    errors: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    for kind, name in [("Namespace", None), ("StatefulSet", None), ("ServiceAccount", "veil"),
                       ("NetworkPolicy", "veil"), ("PodDisruptionBudget", "veil")]:
        need(find(objs, kind, name) is not None, f"exactly one {kind}{' ' + name if name else ''} expected")
    sts = find(objs, "StatefulSet")
    if sts is None:
        return errors
    ns = find(objs, "Namespace")
    if ns:
        need(ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
             "the namespace must enforce Pod Security 'restricted'")

    # StatefulSet governed by a headless Service.
    spec = sts["spec"]
    tmpl = spec["template"]
    pod = tmpl["spec"]
    labels = tmpl["metadata"].get("labels", {})
    sel = spec.get("selector", {}).get("matchLabels", {})
    need(sel and all(labels.get(k) == v for k, v in sel.items()), "StatefulSet selector must match the pod labels")
    headless = find(objs, "Service", spec.get("serviceName"))
    need(headless is not None, f"StatefulSet serviceName {spec.get('serviceName')!r} names no Service")
    if headless:
        need(headless["spec"].get("clusterIP") == "None", "the StatefulSet's governing Service must be headless (clusterIP: None)")
        hsel = headless["spec"].get("selector", {})
        need(hsel and all(labels.get(k) == v for k, v in hsel.items()), "the headless Service must select the pods")

    # The confidential VM.
    need(pod.get("runtimeClassName") == expect["runtime"],
         f"runtimeClassName must be {expect['runtime']}, is {pod.get('runtimeClassName')!r}")
    need(pod.get("nodeSelector", {}).get("nvidia.com/cc.mode.state") == expect["cc_mode"],
         f"nodeSelector nvidia.com/cc.mode.state must be {expect['cc_mode']!r}")
    volumes = check_pod_hardening(objs, pod, f"StatefulSet {sts['metadata']['name']}", need, require_pinned)

    # Annotations: initdata (measured) carries the agent policy; nothing else Kata-specific.
    ann = tmpl["metadata"].get("annotations", {})
    for k in ann:
        if k.startswith("io.katacontainers.") and k != INITDATA:
            errors.append(f"pod annotation {k} is not allowed (the agent policy belongs in the measured initdata; "
                          "other Kata annotations change the VM and its measurement)")
    if INITDATA not in ann:
        errors.append(f"pod annotation {INITDATA} (initdata with the agent policy) is missing")
    else:
        try:
            raw = decode_initdata(ann[INITDATA])
            doc = tomllib.loads(raw.decode("utf-8"))
            data = doc.get("data", {})
            need(doc.get("version") == "0.1.0", "initdata version must be 0.1.0")
            need(doc.get("algorithm") == expect["algorithm"],
                 f"initdata algorithm must be {expect['algorithm']} (fills the TEE's field exactly)")
            policy = data.get("policy.rego", "")
            need(re.search(r"^package agent_policy$", policy, re.M) is not None, "initdata policy.rego must be a Kata agent policy")
            need(re.search(r"^default ExecProcessRequest := false$", policy, re.M) is not None,
                 "agent policy must refuse exec (default ExecProcessRequest := false)")
            need(re.search(r"^default SetPolicyRequest := false$", policy, re.M) is not None,
                 "agent policy must refuse replacement (default SetPolicyRequest := false)")
            aa = tomllib.loads(data.get("aa.toml", ""))
            cdh = tomllib.loads(data.get("cdh.toml", ""))
            need(bool(aa.get("token_configs", {}).get("kbs", {}).get("url")), "initdata aa.toml must name the KBS")
            need(cdh.get("kbc", {}).get("name") == "cc_kbc" and bool(cdh.get("kbc", {}).get("url")),
                 "initdata cdh.toml must configure cc_kbc with the KBS URL")
            if require_pinned:
                need(PLACEHOLDER_POLICY not in policy, "the baseline placeholder agent policy is still in place (run genpolicy)")
                need(PLACEHOLDER_KBS not in raw.decode("utf-8"), "the placeholder KBS URL is still in the initdata")
        except Exception as e:  # noqa: BLE001
            errors.append(f"initdata annotation does not decode (base64 -> gzip -> TOML): {e}")

    need(ann.get("prometheus.io/scrape") == "true", "pod annotation prometheus.io/scrape must be \"true\"")
    need(ann.get("prometheus.io/path") == "/metrics", "pod annotation prometheus.io/path must be /metrics")

    inits = pod.get("initContainers", [])
    mains = pod.get("containers", [])
    main = next((c for c in mains if c["name"] == "veil"), None)
    need(len(mains) == 1 and main is not None, "exactly one container, named veil")
    if main is None:
        return errors
    limits = main.get("resources", {}).get("limits", {})
    need(str(limits.get("nvidia.com/pgpu")) == str(expect["pgpu"]),
         f"container veil: nvidia.com/pgpu must be {expect['pgpu']}, is {limits.get('nvidia.com/pgpu')!r}")
    if expect["nvswitch"] is None:
        need("nvidia.com/nvswitch" not in limits, "container veil: no NVSwitch outside protected PCIe")
    else:
        need(str(limits.get("nvidia.com/nvswitch")) == str(expect["nvswitch"]),
             f"container veil: nvidia.com/nvswitch must be {expect['nvswitch']}")
    for c in inits:
        need(not any(k.startswith("nvidia.com/") for k in c.get("resources", {}).get("limits", {})),
             f"init container {c['name']}: no GPU")

    # The serving command line.
    try:
        env = container_env(main, objs, errors)
        args = [expand(a, env) for a in main.get("args", [])]
    except AssertionError as e:
        errors.append(str(e))
        env, args = {}, []
    need(main.get("command") is None, "container veil: use the image's entrypoint (`veil`), set args only")
    need(args[:1] == ["serve"], "container veil: args must start with `serve`")
    try:
        flags = parse_flags(args[1:], serve_flags())
    except AssertionError as e:
        errors.append(f"container veil: {e}")
        flags = {}
    need(flags.get("--attestation") == "hardware", "veil serve: --attestation hardware (fail closed) is required")
    need("--allow-insecure" not in flags, "veil serve: --allow-insecure is forbidden")
    need(flags.get("--plaintext", "auto") != "on", "veil serve: --plaintext on is forbidden")
    need(re.fullmatch(r"[0-9a-f]{64}", str(flags.get("--model-digest", ""))) is not None,
         "veil serve: --model-digest must pin the model (64 hex digits)")
    ports = {p.get("name"): p["containerPort"] for p in main.get("ports", [])}
    grpc_port = ports.get("grpc")
    need(grpc_port is not None, "container veil: a port named grpc is required")
    try:
        need(listen_port(str(flags.get("--listen", env.get("VEIL_LISTEN", "127.0.0.1:50051")))) == grpc_port,
             "veil serve --listen must use the grpc containerPort")
        need(not str(flags.get("--listen", env.get("VEIL_LISTEN", "127.0.0.1"))).startswith("127."),
             "veil serve --listen must not be loopback-only in a pod")
        need("--metrics-listen" in flags and listen_port(str(flags["--metrics-listen"])) == ports.get("metrics"),
             "veil serve --metrics-listen must use the containerPort named metrics")
        need(ann.get("prometheus.io/port") == str(ports.get("metrics")), "prometheus.io/port must be the metrics port")
    except (ValueError, IndexError) as e:
        errors.append(f"veil serve: bad listen address: {e}")
    grace = float(flags.get("--shutdown-grace", 30))
    need(pod.get("terminationGracePeriodSeconds", 30) >= grace + 10,
         "terminationGracePeriodSeconds must exceed --shutdown-grace by at least 10 s")
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        g = main.get(probe, {}).get("grpc")
        need(g is not None and g.get("port") == grpc_port, f"container veil: {probe} must be a gRPC probe on the grpc port")
        if g:
            need(g.get("service", "") in ("", "veil.v1.Inference"), f"{probe}: unknown health service {g.get('service')!r}")

    # Key-aware routing: this replica's name and the deployment's registry.
    registry = check_registry(objs, sts, main, flags, volumes, need)

    # The model: fetched inside the VM into guest memory, pinned at load.
    home = env.get("VEIL_HOME")
    need(bool(home), "VEIL_HOME must point at the model volume")
    model_vol = next((m["name"] for m in main.get("volumeMounts", []) if m["mountPath"] == home), None)
    need(model_vol is not None, "container veil must mount the model volume at VEIL_HOME")
    if model_vol:
        ed = volumes.get(model_vol, {}).get("emptyDir")
        need(ed is not None and ed.get("medium") == "Memory" and bool(ed.get("sizeLimit")),
             "the model volume must be a memory-backed emptyDir (guest memory) with a sizeLimit")
        need(any(m["name"] == model_vol and m.get("readOnly") is True for m in main.get("volumeMounts", [])),
             "container veil must mount the model volume read-only")
    pulls = []
    for c in inits:
        try:
            cenv = container_env(c, objs)
            cargs = [expand(a, cenv) for a in c.get("args", [])]
        except AssertionError as e:
            errors.append(str(e))
            continue
        if cargs[:2] == ["model", "pull"]:
            pulls.append(c)
            need(c.get("command") is None, f"init container {c['name']}: use the image's entrypoint")
            need(len(cargs) == 3 and cargs[2] == env.get("VEIL_MODEL"),
                 f"init container {c['name']}: must pull the model the server serves ({env.get('VEIL_MODEL')!r})")
            need(cenv.get("VEIL_HOME") == home and any(
                m["name"] == model_vol and m["mountPath"] == home and not m.get("readOnly") for m in c.get("volumeMounts", [])),
                f"init container {c['name']}: must write the model volume at VEIL_HOME")
            need(c.get("image") == main.get("image"), f"init container {c['name']}: must run the same (measured) image")
    need(len(pulls) == 1, "exactly one init container must fetch the model with `veil model pull`")

    # Services, network policy.
    svc_ports = {p["name"]: p for p in (headless or {}).get("spec", {}).get("ports", [])}
    need("grpc" in svc_ports and "metrics" in svc_ports, "the headless Service must expose grpc and metrics")
    if "grpc" in svc_ports:
        need(named_port(main, svc_ports["grpc"].get("targetPort", svc_ports["grpc"]["port"])) == grpc_port,
             "the headless Service's grpc port must target the container's grpc port")
    gw = find(objs, "Deployment", GATEWAY)
    gw_labels = gw["spec"]["template"]["metadata"].get("labels", {}) if gw else None
    check_network_policies(objs, labels, grpc_port, gw_labels, need)

    # The gateway.
    check_gateway(objs, sts, main, registry, require_pinned, need)
    return errors


def check_overlay_files(name: str) -> list[str]:
    """initdata.yaml must encode this overlay's initdata.toml byte for byte."""
    d = ROOT / "deploy" / "overlays" / name
    objs = kustomize_lite.load_yaml_docs(d / "initdata.yaml")
    value = objs[0]["spec"]["template"]["metadata"]["annotations"][INITDATA]
    if decode_initdata(value) != (d / "initdata.toml").read_bytes():
        return [f"deploy/overlays/{name}/initdata.yaml is stale: python3 deploy/scripts/initdata.py encode deploy/overlays/{name}"]
    return []


# ---------------------------------------------------------------------------------------------
# The gateway's configuration loop (generate.py in the ConfigMap veil-gateway), run for a few
# rounds against a fake `veil gateway-config` and a fake DNS.

FAKE_GATEWAY_CONFIG = r"""
import os, pathlib, sys
args = sys.argv[1:]
if os.environ.get("FAKE_VEIL_FAIL"):
    sys.exit("error: no replica answered; is the registry right?")
registry = pathlib.Path(args[args.index("--replicas") + 1]).read_text()
out = pathlib.Path(args[args.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
names = [l.split('"')[1] for l in registry.splitlines() if l.startswith("name = ")]
(out / "nginx.conf").write_text("# fake\n" + "".join(f"# upstream {n}\n" for n in names) + "# args " + " ".join(args) + "\n")
print(out / "nginx.conf")
print(f"{len(names)} of {len(names)} replicas reported a key id", file=sys.stderr)
"""


def check_gateway_loop(objs: list[dict]) -> list[str]:
    errors: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    scripts = find(objs, "ConfigMap", "veil-gateway")
    registry = find(objs, "ConfigMap", "veil-replicas")
    if scripts is None or registry is None:
        return ["the ConfigMaps veil-gateway and veil-replicas are needed"]
    mod = types.ModuleType("veil_gateway_generate")
    exec(compile(scripts["data"]["generate.py"], "generate.py", "exec"), mod.__dict__)  # noqa: S102
    dns = {"veil-0.veil-headless.veil.svc": ["10.0.0.10"]}  # veil-1 is not ready: no DNS name yet

    def resolver(host: str, port: str) -> list[str]:
        if host not in dns:
            raise OSError("Name or service not known")
        return dns[host]

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()) as said:
        t = pathlib.Path(tmp)
        (t / "replicas.toml").write_text(registry["data"]["replicas.toml"])
        (t / "gateway").mkdir()
        pub = t / "gateway" / "nginx.conf"
        a = mod.parse(["--registry", str(t / "replicas.toml"), "--publish", str(pub), "--work", str(t / "work"),
                       "--heartbeat", str(t / "heartbeat"), "--once", "--",
                       sys.executable, "-c", FAKE_GATEWAY_CONFIG, "gateway-config", "--format", "nginx"])
        loop = mod.Loop(a, resolver)
        need(loop.once(), "round 1 (veil-0 resolves): nothing published")
        conf = pub.read_text() if pub.exists() else ""
        need("# upstream veil-0" in conf and "veil-1" not in conf.replace("resolved", ""),
             f"round 1: only the replica that resolves may be configured:\n{conf}")
        need("# veil-gateway: resolved veil-0=10.0.0.10" in conf, "round 1: the published file must name the addresses")
        need(" --replicas " in conf and " --out " in conf, "the loop must pass --replicas and --out")
        need(mod.check_heartbeat(str(t / "heartbeat"), 60) == 0, "the heartbeat is not fresh after a round")
        before = pub.stat()
        need(not loop.once() and pub.stat().st_ino == before.st_ino, "round 2 (no change): republished")
        dns["veil-1.veil-headless.veil.svc"] = ["10.0.0.11"]
        need(loop.once() and "# upstream veil-1" in pub.read_text(), "round 3 (veil-1 ready): not added")
        dns["veil-0.veil-headless.veil.svc"] = ["10.0.0.12"]
        need(loop.once() and "veil-0=10.0.0.12" in pub.read_text(),
             "round 4 (veil-0 on a new address): not republished, nginx would keep the old address")
        kept = pub.read_text()
        os.environ["FAKE_VEIL_FAIL"] = "1"
        try:
            need(not loop.once() and pub.read_text() == kept, "round 5 (veil gateway-config fails): the published file changed")
        finally:
            del os.environ["FAKE_VEIL_FAIL"]
        dns.clear()
        need(not loop.once() and pub.read_text() == kept, "round 6 (nothing resolves): the published file changed")
        for broken in ("replica = 1\n", "[[replica\n", "replica = [1]\n"):
            (t / "replicas.toml").write_text(broken)
            need(not loop.once() and pub.read_text() == kept, f"a broken registry ({broken.strip()}) changed the file")
        need(not list((t / "gateway").glob(".*")), "a temporary file was left next to the published one")
        for bad in (["--registry", "r", "--publish", "p", "--", "veil", "gateway-config", "--out", "/x"],
                    ["--registry", "r", "--publish", "p", "--", "veil", "gateway-config", "--replicas=/x"],
                    ["--registry", "r", "--", "veil", "gateway-config"]):
            try:
                mod.parse(bad)
                errors.append(f"generate.py accepts {bad}")
            except SystemExit:
                pass
    log = said.getvalue()
    need("left out, not resolvable: veil-1" in log, f"the log must say which replicas were left out:\n{log}")
    return errors


def find_nginx() -> str | None:
    return shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/local/sbin")


def check_gateway_nginx(objs: list[dict]) -> list[str] | None:
    """nginx-run.sh with a real nginx (None when nginx is not installed): the bootstrap listens,
    a published file is checked and loaded (worker_processes replaced), a broken one is refused
    once and the running configuration kept, SIGTERM stops nginx."""
    nginx = find_nginx()
    if nginx is None or not shutil.which("sh"):
        return None
    import signal
    import socket
    import time
    script = find(objs, "ConfigMap", "veil-gateway")["data"]["nginx-run.sh"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = pathlib.Path(tmp)
        run, pub = t / "run", t / "gateway"
        run.mkdir()
        pub.mkdir()
        (t / "nginx-run.sh").write_text(script)
        conf = pub / "nginx.conf"
        good = (f"worker_processes auto;\npid {run}/nginx.pid;\nerror_log {run}/error.log warn;\n"
                "events {\n    worker_connections 16;\n}\n"
                f"http {{\n    access_log {run}/access.log;\n    client_body_temp_path {run}/client_body;\n"
                f"    proxy_temp_path {run}/proxy;\n    server {{\n        listen 127.0.0.1:{port} http2;\n"
                "        location / {\n            return 204;\n        }\n    }\n}\n")
        env = dict(os.environ, RUN_DIR=str(run), CONFIG=str(conf), LISTEN=f"127.0.0.1:{port}", WORKERS="1",
                   WATCH_INTERVAL="0.2", PATH=f"{pathlib.Path(nginx).parent}:{os.environ.get('PATH', '')}")
        log = t / "log"
        with open(log, "w") as out:
            proc = subprocess.Popen(["sh", str(t / "nginx-run.sh")], env=env, stdout=out, stderr=subprocess.STDOUT)

        def wait_for(cond, secs: float = 10.0) -> bool:
            end = time.monotonic() + secs
            while time.monotonic() < end:
                if cond():
                    return True
                time.sleep(0.1)
            return False

        def listening() -> bool:
            with socket.socket() as c:
                return c.connect_ex(("127.0.0.1", port)) == 0

        try:
            if not wait_for(listening):
                errors.append("the bootstrap configuration does not listen")
            tmp_conf = pub / ".next"
            tmp_conf.write_text(good)
            os.replace(tmp_conf, conf)
            if not wait_for(lambda: "loaded the configuration" in log.read_text()):
                errors.append("a published configuration was not loaded")
            installed = (run / "nginx.conf").read_text()
            if "worker_processes 1;" not in installed or "worker_processes auto;" in installed:
                errors.append("worker_processes auto was not replaced by WORKERS")
            tmp_conf.write_text(good.replace("events {", "events {\n    no_such_directive 1;"))
            os.replace(tmp_conf, conf)
            if not wait_for(lambda: "refuses the configuration" in log.read_text()):
                errors.append("a broken configuration was not refused")
            time.sleep(1)
            if log.read_text().count("refuses the configuration") != 1:
                errors.append("a refused configuration must be logged once")
            if (run / "nginx.conf").read_text() != installed or not listening():
                errors.append("a refused configuration replaced the running one")
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(15)
                if rc != 0:
                    errors.append(f"SIGTERM: nginx-run.sh exited {rc}")
            except subprocess.TimeoutExpired:
                errors.append("SIGTERM did not stop nginx-run.sh")
            if listening():
                errors.append("nginx still listens after SIGTERM")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            pid_file = run / "nginx.pid"
            if pid_file.exists():  # nginx left running: stop it (its pid, nothing else)
                with contextlib.suppress(ValueError, OSError):
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        if errors:
            errors.append("log:\n" + log.read_text())
    return errors


# ---------------------------------------------------------------------------------------------
# Mutations: each must be caught by the checks above (the tests test themselves).

def pod_of(objs):
    return find(objs, "StatefulSet")["spec"]["template"]["spec"]


def main_of(objs):
    return pod_of(objs)["containers"][0]


def init_of(objs):
    return pod_of(objs)["initContainers"][0]


def ann_of(objs):
    return find(objs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]


def with_initdata(objs, edit):
    raw = decode_initdata(ann_of(objs)[INITDATA]).decode()
    ann_of(objs)[INITDATA] = base64.b64encode(gzip.compress(edit(raw).encode())).decode()


def set_flag(objs, flag, value):
    args = main_of(objs)["args"]
    args[args.index(flag) + 1] = value


def drop_flag(objs, flag):
    args = main_of(objs)["args"]
    i = args.index(flag)
    del args[i:i + 2]


def env_of(c, name):
    return next(e for e in c["env"] if e["name"] == name)


def edit_registry(objs, edit):
    cm = find(objs, "ConfigMap", "veil-replicas")
    cm["data"]["replicas.toml"] = edit(cm["data"]["replicas.toml"])


def gateway_pod(objs):
    return find(objs, "Deployment", GATEWAY)["spec"]["template"]["spec"]


def gateway_container(objs, name):
    return next(c for c in gateway_pod(objs)["containers"] if c["name"] == name)


def set_gateway_arg(objs, flag, value):
    args = gateway_container(objs, "config")["args"]
    args[args.index(flag) + 1] = value


def prepend_gateway_args(objs, args):
    c = gateway_container(objs, "config")
    c["args"] = args + c["args"]


def remove_object(objs, kind, name):
    objs.remove(find(objs, kind, name))


def edit_script(objs, key, edit):
    cm = find(objs, "ConfigMap", "veil-gateway")
    cm["data"][key] = edit(cm["data"][key])


MUTATIONS = {
    "privileged container": lambda o: main_of(o)["securityContext"].update(privileged=True),
    "allowPrivilegeEscalation on the init container": lambda o: init_of(o)["securityContext"].update(allowPrivilegeEscalation=True),
    "added capability": lambda o: main_of(o)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
    "capabilities not dropped": lambda o: init_of(o)["securityContext"].pop("capabilities"),
    "writable root filesystem": lambda o: main_of(o)["securityContext"].update(readOnlyRootFilesystem=False),
    "root user": lambda o: pod_of(o)["securityContext"].update(runAsNonRoot=False),
    "hostPath volume": lambda o: pod_of(o)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "hostNetwork": lambda o: pod_of(o).update(hostNetwork=True),
    "hostPID": lambda o: pod_of(o).update(hostPID=True),
    "hostPort": lambda o: main_of(o)["ports"][0].update(hostPort=50051),
    "image by tag": lambda o: main_of(o).update(image="registry.example/veil:latest"),
    "init image by tag": lambda o: init_of(o).update(image="registry.example/veil:latest"),
    "non-confidential runtime class": lambda o: pod_of(o).update(runtimeClassName="kata-qemu-nvidia-gpu"),
    "no runtime class": lambda o: pod_of(o).pop("runtimeClassName"),
    "two GPUs": lambda o: main_of(o)["resources"]["limits"].update({"nvidia.com/pgpu": "2"}),
    "no memory limit on the init container": lambda o: init_of(o)["resources"]["limits"].pop("memory"),
    "no ephemeral-storage limit": lambda o: main_of(o)["resources"]["limits"].pop("ephemeral-storage"),
    "TCP liveness probe": lambda o: main_of(o).update(livenessProbe={"tcpSocket": {"port": 50051}}),
    "no startup probe": lambda o: main_of(o).pop("startupProbe"),
    "no Prometheus scrape annotation": lambda o: ann_of(o).pop("prometheus.io/scrape"),
    "metrics port mismatch": lambda o: ann_of(o).update({"prometheus.io/port": "9091"}),
    "governing Service not headless": lambda o: find(o, "Service", "veil-headless")["spec"].pop("clusterIP"),
    "serviceName names the ClusterIP Service": lambda o: find(o, "StatefulSet")["spec"].update(serviceName="veil"),
    "no initdata": lambda o: ann_of(o).pop(INITDATA),
    "initdata not base64": lambda o: ann_of(o).update({INITDATA: "not base64!"}),
    "agent policy allows exec": lambda o: with_initdata(o, lambda t: t.replace(
        "default ExecProcessRequest := false", "default ExecProcessRequest := true")),
    "agent policy can be replaced": lambda o: with_initdata(o, lambda t: t.replace(
        "default SetPolicyRequest := false", "default SetPolicyRequest := true")),
    "unmeasured policy annotation": lambda o: ann_of(o).update({LEGACY_POLICY: "cGFja2FnZSBhZ2VudF9wb2xpY3k="}),
    "kernel_params annotation": lambda o: ann_of(o).update({"io.katacontainers.config.hypervisor.kernel_params": "x"}),
    "service-account token mounted": lambda o: pod_of(o).update(automountServiceAccountToken=True),
    "ServiceAccount automounts": lambda o: find(o, "ServiceAccount", "veil").update(automountServiceAccountToken=True),
    "no model pull": lambda o: init_of(o).update(args=["model", "list"]),
    "pulls another model": lambda o: init_of(o).update(args=["model", "pull", "other"]),
    "no model digest pin": lambda o: set_flag(o, "--model-digest", ""),
    "allow-insecure": lambda o: main_of(o)["args"].append("--allow-insecure"),
    "simulated attestation": lambda o: set_flag(o, "--attestation", "auto"),
    "plaintext RPCs on": lambda o: set_flag(o, "--plaintext", "on"),
    "a flag veil does not have": lambda o: main_of(o)["args"].extend(["--tensor-parallel-size", "8"]),
    "model on a disk-backed emptyDir": lambda o: next(
        v for v in pod_of(o)["volumes"] if v["name"] == "models")["emptyDir"].pop("medium"),
    "model volume writable by the server": lambda o: next(
        m for m in main_of(o)["volumeMounts"] if m["name"] == "models").pop("readOnly"),
    "PPCIe node for a single-GPU overlay": lambda o: pod_of(o)["nodeSelector"].update({"nvidia.com/cc.mode.state": "ppcie"}),
    "namespace not restricted": lambda o: find(o, "Namespace")["metadata"]["labels"].pop("pod-security.kubernetes.io/enforce"),
    # Key-aware routing: the replica's name and the registry.
    "no --replica-name": lambda o: drop_flag(o, "--replica-name"),
    "--replica-name a fixed name": lambda o: set_flag(o, "--replica-name", "veil-0"),
    "POD_NAME from the namespace": lambda o: env_of(main_of(o), "POD_NAME")["valueFrom"]["fieldRef"].update(
        fieldPath="metadata.namespace"),
    "no --replicas": lambda o: drop_flag(o, "--replicas"),
    "--replicas not the mounted registry": lambda o: set_flag(o, "--replicas", "/tmp/replicas.toml"),
    "registry not mounted": lambda o: main_of(o)["volumeMounts"].remove(
        next(m for m in main_of(o)["volumeMounts"] if m["name"] == "registry")),
    "registry mounted writable": lambda o: next(
        m for m in main_of(o)["volumeMounts"] if m["name"] == "registry").pop("readOnly"),
    "an extra --replica flag": lambda o: main_of(o)["args"].extend(["--replica", "veil-9=veil-9.veil-headless.veil.svc:50051"]),
    "registry one replica short": lambda o: edit_registry(o, lambda t: t[:t.rindex("[[replica]]")]),
    "registry lists a pod that does not exist": lambda o: edit_registry(o, lambda t: t.replace('"veil-1"', '"veil-7"')),
    "StatefulSet scaled without the registry": lambda o: find(o, "StatefulSet")["spec"].update(replicas=3),
    "registry URL through the ClusterIP Service": lambda o: edit_registry(
        o, lambda t: t.replace("veil-1.veil-headless.veil.svc", "veil.veil.svc")),
    "registry URL in another namespace": lambda o: edit_registry(o, lambda t: t.replace(".veil.svc", ".default.svc")),
    "registry URL on another port": lambda o: edit_registry(o, lambda t: t.replace(":50051", ":50052")),
    "registry URL over https (veil refuses it)": lambda o: edit_registry(o, lambda t: t.replace("http://", "https://")),
    "registry URL with a path (veil refuses it)": lambda o: edit_registry(o, lambda t: t.replace(":50051\"", ":50051/x\"")),
    "registry with an unknown field": lambda o: edit_registry(o, lambda t: t + "port = 1\n"),
    "registry not TOML": lambda o: edit_registry(o, lambda t: t + "[[replica\n"),
    # The gateway.
    "no gateway": lambda o: remove_object(o, "Deployment", GATEWAY),
    "no gateway Service": lambda o: remove_object(o, "Service", GATEWAY),
    "gateway Service selects other pods": lambda o: find(o, "Service", GATEWAY)["spec"].update(
        selector={"app.kubernetes.io/name": "other"}),
    "privileged gateway container": lambda o: gateway_container(o, "nginx")["securityContext"].update(privileged=True),
    "gateway runs as root": lambda o: gateway_pod(o)["securityContext"].update(runAsNonRoot=False, runAsUser=0),
    "gateway container escalates": lambda o: gateway_container(o, "config")["securityContext"].update(
        allowPrivilegeEscalation=True),
    "gateway writable root filesystem": lambda o: gateway_container(o, "nginx")["securityContext"].update(
        readOnlyRootFilesystem=False),
    "gateway capabilities not dropped": lambda o: gateway_container(o, "nginx")["securityContext"].pop("capabilities"),
    "gateway adds a capability": lambda o: gateway_container(o, "nginx")["securityContext"]["capabilities"].update(
        add=["NET_BIND_SERVICE"]),
    "gateway seccomp unconfined": lambda o: gateway_pod(o)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "gateway nginx image by tag": lambda o: gateway_container(o, "nginx").update(image="docker.io/library/nginx:1.27-alpine"),
    "gateway config image not the engine's": lambda o: gateway_container(o, "config").update(
        image="registry.example/other@sha256:" + "1" * 64),
    "gateway without a memory limit": lambda o: gateway_container(o, "nginx")["resources"]["limits"].pop("memory"),
    "gateway without ephemeral-storage requests": lambda o: gateway_container(o, "config")["resources"]["requests"].pop(
        "ephemeral-storage"),
    "gateway without a readiness probe": lambda o: gateway_container(o, "nginx").pop("readinessProbe"),
    "gateway probe on a port it does not serve": lambda o: gateway_container(o, "nginx").update(
        livenessProbe={"tcpSocket": {"port": 8080}}),
    "gateway config container without liveness": lambda o: gateway_container(o, "config").pop("livenessProbe"),
    "gateway service-account token": lambda o: gateway_pod(o).update(automountServiceAccountToken=True),
    "gateway ServiceAccount automounts": lambda o: find(o, "ServiceAccount", GATEWAY).update(automountServiceAccountToken=True),
    "gateway hostNetwork": lambda o: gateway_pod(o).update(hostNetwork=True),
    "gateway hostPath volume": lambda o: gateway_pod(o)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "gateway hostPort": lambda o: gateway_container(o, "nginx")["ports"][0].update(hostPort=50051),
    "gateway-config flag veil does not have": lambda o: gateway_container(o, "config")["args"].extend(["--key-map", "x"]),
    "gateway-config for HAProxy": lambda o: set_gateway_arg(o, "--format", "haproxy"),
    "gateway-config --out set in the manifest": lambda o: gateway_container(o, "config")["args"].extend(["--out", "/tmp/x"]),
    "gateway reads another registry": lambda o: set_gateway_arg(o, "--registry", "/etc/veil-gateway/generate.py"),
    "gateway --run-dir not nginx's": lambda o: set_gateway_arg(o, "--run-dir", "/tmp/nginx"),
    "gateway listens on another port than nginx's": lambda o: set_gateway_arg(o, "--listen", "0.0.0.0:8443"),
    "gateway publishes where nginx does not read": lambda o: set_gateway_arg(o, "--publish", "/tmp/nginx.conf"),
    "gateway loop option that does not exist": lambda o: prepend_gateway_args(o, ["--bogus", "1"]),
    "gateway generate.py does not compile": lambda o: edit_script(o, "generate.py", lambda t: t + "\ndef (:\n"),
    "gateway nginx-run.sh does not parse": lambda o: edit_script(o, "nginx-run.sh", lambda t: t + "\nif then fi (\n"),
    "replicas accept gRPC from anyone": lambda o: find(o, "NetworkPolicy", "veil")["spec"]["ingress"][0].pop("from"),
    "replicas accept gRPC from any pod of another namespace": lambda o: find(o, "NetworkPolicy", "veil")["spec"]["ingress"][0][
        "from"].append({"namespaceSelector": {}}),
    "replicas accept all ports from anyone": lambda o: find(o, "NetworkPolicy", "veil")["spec"]["ingress"].append({}),
    "gateway cannot reach the replicas": lambda o: find(o, "NetworkPolicy", GATEWAY)["spec"]["egress"].pop(1),
    "no gateway NetworkPolicy": lambda o: remove_object(o, "NetworkPolicy", GATEWAY),
    # Caught by the schema check, not the policy.
    "schema: replicas is a string": lambda o: find(o, "StatefulSet")["spec"].update(replicas="two"),
    "schema: unknown field": lambda o: main_of(o).update(imagePullPolicyy="Always"),
}


# ---------------------------------------------------------------------------------------------

class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def record(self, name: str, errors: list[str]) -> None:
        if errors:
            self.failed += 1
            print(f"FAIL {name}")
            for e in errors:
                print(f"     - {e}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def run(require_pinned: bool) -> Results:
    res = Results()
    installed = getattr(kubernetes_validate, "__version__", "?")
    if installed != KUBERNETES_VALIDATE_VERSION:
        print(f"note: kubernetes-validate {installed} installed, the tests pin {KUBERNETES_VALIDATE_VERSION}")

    present = sorted(p.name for p in (ROOT / "deploy" / "overlays").iterdir() if p.is_dir())
    res.record("every overlay has expectations in this test",
               [f"deploy/overlays/{n} is not in OVERLAYS" for n in present if n not in OVERLAYS]
               + [f"OVERLAYS names missing deploy/overlays/{n}" for n in OVERLAYS if n not in present])

    rendered: dict[str, list[dict]] = {}
    for name, expect in OVERLAYS.items():
        try:
            objs = kustomize_lite.render(ROOT / "deploy" / "overlays" / name)
        except Exception as e:  # noqa: BLE001
            res.record(f"{name}: renders", [f"{type(e).__name__}: {e}"])
            continue
        rendered[name] = objs
        res.record(f"{name}: renders", [])
        res.record(f"{name}: Kubernetes schema ({', '.join(K8S_VERSIONS)}, strict)", check_schema(objs))
        try:
            errs = check_policy(objs, expect, require_pinned)
        except Exception:  # noqa: BLE001
            errs = ["check crashed:\n" + traceback.format_exc()]
        res.record(f"{name}: deployment policy", errs)
        res.record(f"{name}: initdata.yaml encodes initdata.toml", check_overlay_files(name))

    # The gateway's configuration loop.
    if "tdx" in rendered:
        try:
            errs = check_gateway_loop(rendered["tdx"])
        except Exception:  # noqa: BLE001
            errs = ["crashed:\n" + traceback.format_exc()]
        res.record("gateway: rounds of the configuration loop against a fake veil and DNS", errs)
        try:
            errs = check_gateway_nginx(rendered["tdx"])
        except Exception:  # noqa: BLE001
            errs = ["crashed:\n" + traceback.format_exc()]
        if errs is None:
            print("skip gateway: nginx-run.sh with nginx (nginx is not installed)")
        else:
            res.record("gateway: nginx-run.sh with a real nginx (bootstrap, reload, refusal, SIGTERM)", errs)

    # The optional ServiceMonitor component on top of an overlay.
    with tempfile.TemporaryDirectory() as tmp:
        k = pathlib.Path(tmp) / "kustomization.yaml"
        k.write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {ROOT / 'deploy/overlays/tdx'}\n"
            f"components:\n  - {ROOT / 'deploy/components/servicemonitor'}\n")
        errs = []
        try:
            objs = kustomize_lite.render(tmp)
            sm = find(objs, "ServiceMonitor")
            headless = find(objs, "Service", "veil-headless")
            if sm is None or headless is None:
                errs.append("ServiceMonitor or headless Service missing")
            else:
                sel = sm["spec"]["selector"]["matchLabels"]
                if not all(headless["metadata"]["labels"].get(a) == b for a, b in sel.items()):
                    errs.append("ServiceMonitor selector does not match the headless Service")
                ports = {p["name"] for p in headless["spec"]["ports"]}
                for ep in sm["spec"]["endpoints"]:
                    if ep.get("port") not in ports or ep.get("path") != "/metrics":
                        errs.append(f"ServiceMonitor endpoint {ep} does not scrape the metrics port at /metrics")
                errs += check_schema([o for o in objs if o["kind"] != "ServiceMonitor"])
                errs += check_policy(objs, OVERLAYS["tdx"], require_pinned)
        except Exception as e:  # noqa: BLE001
            errs.append(f"{type(e).__name__}: {e}")
        res.record("component servicemonitor on tdx", errs)

    # The checks catch what they are meant to catch.
    base = rendered.get("tdx")
    if base is not None:
        missed = []
        for desc, mutate in MUTATIONS.items():
            objs = copy.deepcopy(base)
            try:
                mutate(objs)
                caught = check_schema(objs) if desc.startswith("schema:") else check_policy(
                    objs, OVERLAYS["tdx"], require_pinned)
            except Exception:  # noqa: BLE001
                # A check that crashes catches nothing: it must report the break.
                missed.append(f"crashed on: {desc}\n" + traceback.format_exc())
                continue
            if not caught:
                missed.append(f"not caught: {desc}")
        res.record(f"{len(MUTATIONS)} broken variants of tdx are each refused", missed)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--require-pinned", action="store_true",
                   help="also refuse placeholder image digests, the baseline agent policy and the example KBS URL")
    a = p.parse_args()
    res = run(a.require_pinned)
    print(f"{res.passed} passed, {res.failed} failed")
    sys.exit(1 if res.failed else 0)


if __name__ == "__main__":
    main()
