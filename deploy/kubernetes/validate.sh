#!/usr/bin/env bash
# Validate deploy/kubernetes offline (no cluster): see validate.py for what is checked.
#
#   bash deploy/kubernetes/validate.sh            # base and every overlay
#
# Runs in a virtualenv with `kubernetes-validate` (the Kubernetes JSON schemas of each
# release; validate.py names the one it uses) and its dependencies (jsonschema, PyYAML). The
# venv is made once, outside the work tree, and reused: it needs PyPI only the first time
# (about 10 s and 145 MB, most of it the schemas of 13 Kubernetes releases).
# SWITCHYARD_K8S_VENV moves it.
#
# The policy in base/ is checked by the gateway itself in tests/kubernetes.rs (`cargo test`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

KUBERNETES_VALIDATE_VERSION=1.37.0
venv="${SWITCHYARD_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/k8s-validate-$KUBERNETES_VALIDATE_VERSION}"
if ! "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
    echo "creating $venv (kubernetes-validate==$KUBERNETES_VALIDATE_VERSION)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
"$venv/bin/python" "$here/validate.py" "$@"
