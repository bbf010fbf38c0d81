#!/usr/bin/env python3
"""Offline tests of the Kubernetes manifests in deploy/ (docs/scale-out.md).

For every overlay in deploy/overlays/ it renders the Kustomize tree (tests/deploy/kustomize_lite.py,
no kustomize binary needed), validates every object against the Kubernetes OpenAPI schemas with
kubernetes-validate (strict: unknown fields are errors) for each version in K8S_VERSIONS, and
checks the deployment policy: the right Kata runtime class, GPU and NVSwitch counts, the image
pinned by digest, nothing privileged, resource limits everywhere, gRPC probes, Prometheus scrape
settings, a StatefulSet governed by a headless Service, the measured initdata with the Kata agent
policy, the model fetched in the confidential VM and pinned by digest, no service-account token,
and only `veil` flags that exist (read from src/cli/). It then breaks a rendered overlay in many
ways and checks that each break is caught.

    python3 -m pip install --user kubernetes-validate==1.37.0     # once (scripts/check-deploy.sh)
    python3 tests/deploy/test_manifests.py [--require-pinned]

--require-pinned additionally refuses the placeholders (image digest of zeros, the baseline
agent policy, the example KBS URL): run it on your own overlay before `kubectl apply -k`.
Exits non-zero on any failure; the last line reads "N passed, N failed".
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import pathlib
import re
import sys
import tempfile
import traceback

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


def parse_flags(args: list[str], known: dict[str, bool]) -> dict[str, object]:
    out: dict[str, object] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise AssertionError(f"unexpected argument {a!r}")
        name, _, value = a.partition("=")
        if name not in known:
            raise AssertionError(f"`veil serve` has no flag {name}")
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


def container_env(c: dict, objs: list[dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ef in c.get("envFrom", []):
        ref = ef.get("configMapRef", {}).get("name")
        cm = find(objs, "ConfigMap", ref)
        assert cm is not None, f"container {c['name']}: envFrom ConfigMap {ref} is not in the overlay"
        env.update(cm.get("data", {}))
    for e in c.get("env", []):
        assert "value" in e, f"container {c['name']}: env {e['name']} must be a literal value"
        env[e["name"]] = e["value"]
    return env


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


def check_policy(objs: list[dict], expect: dict, require_pinned: bool) -> list[str]:
    """The deployment rules; returns the violations (empty when all hold)."""
    errors: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    for kind in ["Namespace", "ServiceAccount", "ConfigMap", "StatefulSet", "NetworkPolicy", "PodDisruptionBudget"]:
        need(find(objs, kind) is not None, f"exactly one {kind} expected")
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
    for host in ["hostNetwork", "hostPID", "hostIPC"]:
        need(not pod.get(host), f"{host} must not be set")
    need(pod.get("automountServiceAccountToken") is False, "pod: automountServiceAccountToken must be false")
    sa = find(objs, "ServiceAccount", pod.get("serviceAccountName"))
    need(sa is not None and sa.get("automountServiceAccountToken") is False,
         "the pod's ServiceAccount must exist with automountServiceAccountToken: false")
    psc = pod.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
    need(psc.get("runAsUser", 0) != 0, "pod securityContext.runAsUser must be set and not 0")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile must be RuntimeDefault")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for v in volumes.values():
        kinds = set(v) - {"name"}
        need(kinds <= {"emptyDir", "configMap"}, f"volume {v['name']}: only emptyDir and configMap volumes are allowed, not {sorted(kinds)}")

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

    # Containers.
    inits = pod.get("initContainers", [])
    mains = pod.get("containers", [])
    for c in inits + mains:
        name = c["name"]
        need(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", c.get("image", "")) is not None,
             f"container {name}: image must be pinned by digest (@sha256:<64 hex>), is {c.get('image')!r}")
        if require_pinned:
            need(not c.get("image", "").endswith(PLACEHOLDER_DIGEST), f"container {name}: placeholder image digest")
        sc = c.get("securityContext", {})
        need(sc.get("privileged") is not True, f"container {name}: privileged")
        need(sc.get("allowPrivilegeEscalation") is False, f"container {name}: allowPrivilegeEscalation must be false")
        need(sc.get("readOnlyRootFilesystem") is True, f"container {name}: readOnlyRootFilesystem must be true")
        need("ALL" in sc.get("capabilities", {}).get("drop", []), f"container {name}: capabilities must drop ALL")
        need(not sc.get("capabilities", {}).get("add"), f"container {name}: no capabilities may be added")
        need(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"container {name}: runAsNonRoot must be true")
        need(sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, f"container {name}: must not run as UID 0")
        need(sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault",
             f"container {name}: seccompProfile must be RuntimeDefault")
        res = c.get("resources", {})
        for r in ["cpu", "memory", "ephemeral-storage"]:
            need(r in res.get("limits", {}), f"container {name}: resources.limits.{r} is missing")
            need(r in res.get("requests", {}), f"container {name}: resources.requests.{r} is missing")
        for p in c.get("ports", []):
            need("hostPort" not in p, f"container {name}: hostPort")
        for m in c.get("volumeMounts", []):
            need(m["name"] in volumes, f"container {name}: mounts unknown volume {m['name']}")

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
    env = container_env(main, objs)
    need(main.get("command") is None, "container veil: use the image's entrypoint (`veil`), set args only")
    args = [expand(a, env) for a in main.get("args", [])]
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
        cenv = container_env(c, objs)
        cargs = [expand(a, cenv) for a in c.get("args", [])]
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
    np_ = find(objs, "NetworkPolicy")
    if np_:
        npsel = np_["spec"].get("podSelector", {}).get("matchLabels", {})
        need(npsel and all(labels.get(k) == v for k, v in npsel.items()), "the NetworkPolicy must select the pods")
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
    "ServiceAccount automounts": lambda o: find(o, "ServiceAccount").update(automountServiceAccountToken=True),
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
            mutate(objs)
            if desc.startswith("schema:"):
                caught = check_schema(objs)
            else:
                try:
                    caught = check_policy(objs, OVERLAYS["tdx"], require_pinned)
                except Exception as e:  # noqa: BLE001
                    caught = [f"crashed: {e}"]
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
