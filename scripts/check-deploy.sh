#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in deploy/ (docs/scale-out.md): the generated
# initdata and replica registries are up to date, and every overlay renders, validates against
# the Kubernetes schemas with kubernetes-validate and meets the deployment policy
# (tests/deploy/test_manifests.py). Needs python3 (3.11+) and, once, PyPI for
# kubernetes-validate; no cluster, kubectl or kustomize. Extra arguments go to the test
# (e.g. --require-pinned before deploying your own overlay).
set -euo pipefail
cd "$(dirname "$0")/.."
KV_VERSION=1.37.0
if ! python3 -c "import kubernetes_validate as k, sys; sys.exit(k.__version__ != '$KV_VERSION')" 2>/dev/null; then
    python3 -m pip install --quiet --user "kubernetes-validate==$KV_VERSION"
fi
python3 deploy/scripts/initdata.py check
python3 deploy/scripts/registry.py check
python3 tests/deploy/test_manifests.py "$@"
