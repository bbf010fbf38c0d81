#!/usr/bin/env python3
"""An offline renderer for the subset of Kustomize that deploy/ uses.

There is no `kustomize` or `kubectl` binary on the machines that run the tests, so the tests
render the overlays with this file. It implements exactly the features deploy/ uses, with
Kustomize's semantics, and refuses everything else, so that a manifest change that would need
more of Kustomize fails loudly here instead of being rendered differently:

- `resources`: YAML files (one or more documents) and directories holding a kustomization.yaml
  (rendered recursively);
- `components`: directories holding a `kind: Component` kustomization (resources, patches);
- `patches` with `path` (and an optional `target` naming kind and name): strategic-merge patches
  with the Kubernetes merge keys of the fields used (containers, initContainers, volumes, env,
  volumeMounts, imagePullSecrets) — maps merge, a null value deletes a key, other lists are
  replaced; `$patch` directives and JSON 6902 patches are refused;
- `images`: `name` with `newName`, `newTag` and/or `digest`, applied to containers and
  initContainers of workloads (Kustomize's images transformer);
- `namespace`: set on every namespaced object (and the name of a Namespace object).

Usage: python3 tests/deploy/kustomize_lite.py DIR   prints the rendered YAML stream.
"""

from __future__ import annotations

import copy
import pathlib
import sys

import yaml

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "images", "namespace"}
PATCH_KEYS = {"path", "target"}
TARGET_KEYS = {"kind", "name"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
# x-kubernetes-patch-merge-key of the list fields the patches may touch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
# Lists whose strategic merge needs a merge key this renderer does not model: refuse to patch.
UNSUPPORTED_LIST_PATCHES = {"ports", "envFrom", "tolerations", "topologySpreadConstraints"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "RuntimeClass",
                  "PriorityClass", "CustomResourceDefinition", "StorageClass", "PersistentVolume"}
POD_TEMPLATE_KINDS = {"StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(Exception):
    pass


def load_yaml_docs(path: pathlib.Path) -> list[dict]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: not a Kubernetes object")
    return docs


def ident(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def smp(base, patch, field: str = ""):
    """Strategic merge of `patch` into `base` (both plain YAML data); returns the result."""
    if isinstance(patch, dict):
        for k in patch:
            if isinstance(k, str) and k.startswith("$"):
                raise KustomizeError(f"strategic-merge directive {k!r} is not supported")
        if not isinstance(base, dict):
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = smp(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list):
        if field in UNSUPPORTED_LIST_PATCHES:
            raise KustomizeError(f"patching the list {field!r} is not supported by this renderer")
        key = MERGE_KEYS.get(field)
        if key is None or not isinstance(base, list):
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"{field}: every patch item needs {key!r}")
            for i, existing in enumerate(out):
                if existing.get(key) == item[key]:
                    out[i] = smp(existing, item, "")
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


def apply_images(objs: list[dict], images: list[dict]) -> None:
    for spec in images:
        unknown = set(spec) - IMAGE_KEYS
        if unknown:
            raise KustomizeError(f"images: unsupported keys {sorted(unknown)}")
        for obj in objs:
            if obj["kind"] not in POD_TEMPLATE_KINDS and obj["kind"] != "Pod":
                continue
            pod = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                name, tag, digest = split_image(c["image"])
                if name != spec["name"]:
                    continue
                name = spec.get("newName", name)
                if "digest" in spec:
                    c["image"] = f"{name}@{spec['digest']}"
                elif "newTag" in spec:
                    c["image"] = f"{name}:{spec['newTag']}"
                else:
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def apply_patches(root: pathlib.Path, objs: list[dict], patches: list[dict]) -> None:
    for p in patches:
        unknown = set(p) - PATCH_KEYS
        if unknown or "path" not in p:
            raise KustomizeError(f"{root}: only patches with `path` (and `target`) are supported")
        target = p.get("target") or {}
        if set(target) - TARGET_KEYS:
            raise KustomizeError(f"{root}: patch target supports only kind and name")
        for patch in load_yaml_docs(root / p["path"]):
            if isinstance(patch, list) or "op" in patch:
                raise KustomizeError(f"{root / p['path']}: JSON 6902 patches are not supported")
            kind = target.get("kind", patch["kind"])
            name = target.get("name", patch["metadata"]["name"])
            hits = [i for i, o in enumerate(objs) if ident(o) == (kind, name)]
            if len(hits) != 1:
                raise KustomizeError(f"{root / p['path']}: patch target {kind}/{name} matched {len(hits)} objects")
            objs[hits[0]] = smp(objs[hits[0]], patch)


def render(path: str | pathlib.Path, _component: bool = False) -> list[dict]:
    root = pathlib.Path(path)
    kfile = root / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{root}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}")
    want = "Component" if _component else "Kustomization"
    if k.get("kind", "Kustomization") != want:
        raise KustomizeError(f"{kfile}: expected kind {want}")
    objs: list[dict] = []
    for r in k.get("resources", []):
        rp = root / r
        objs.extend(render(rp) if rp.is_dir() else load_yaml_docs(rp))
    seen = set()
    for o in objs:
        if ident(o) in seen:
            raise KustomizeError(f"{root}: duplicate object {ident(o)}")
        seen.add(ident(o))
    for c in k.get("components", []):
        ck = yaml.safe_load((root / c / "kustomization.yaml").read_text()) or {}
        if set(ck) - {"apiVersion", "kind", "resources", "patches"}:
            raise KustomizeError(f"{root / c}: unsupported component fields")
        if ck.get("kind") != "Component":
            raise KustomizeError(f"{root / c}: not a kind: Component")
        for r in ck.get("resources", []):
            objs.extend(load_yaml_docs(root / c / r))
        apply_patches(root / c, objs, ck.get("patches", []))
    apply_patches(root, objs, k.get("patches", []))
    apply_images(objs, k.get("images", []))
    ns = k.get("namespace")
    if ns:
        for o in objs:
            if o["kind"] == "Namespace":
                o["metadata"]["name"] = ns
            elif o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns
    return objs


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
