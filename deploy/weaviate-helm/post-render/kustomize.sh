#!/usr/bin/env sh
# Helm post-renderer: the chart's manifests on stdin, the patched manifests on stdout.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cat > "$here/rendered.yaml"
trap 'rm -f "$here/rendered.yaml"' EXIT
kubectl kustomize "$here"
