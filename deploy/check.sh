#!/usr/bin/env bash
# `make deploy-check`: everything about deploy/ and the Dockerfile that can be checked offline,
# without a cluster or a Docker engine. Exit 0 only when every step passes.
#
#   1. yamllint (strict) over deploy/ sources; the Grafana dashboard parses as JSON
#   2. render every overlay and Strimzi kustomization (kubectl kustomize, else kustomize, else
#      deploy/render.py on pykustomize: the same kustomize v5 engine from a PyPI wheel)
#   3. kubernetes-validate --strict of the rendered output against the bundled Kubernetes schemas
#      of the oldest and newest versions we target (CRDs have no bundled schema: they are only
#      reported, and tests/deploy/test_manifests.py checks their content)
#   4. checkov over the rendered output and the Dockerfile: any failed check fails the run; skips
#      carry their reason in place (see .checkov.yaml)
#   5. promtool: the PrometheusRule's rules check, and its unit tests (monitoring/prometheusrule.test.yaml)
#      pass. promtool comes from Debian's `prometheus` package, unpacked into .venv-deploy/bin (no
#      service installed); PROMTOOL names another one.
#
# The tools live in their own virtualenv (.venv-deploy) so they cannot clash with the app's.
# Environment: DEPLOY_DIR (default deploy/), DOCKERFILE, K8S_VERSIONS, RENDERER
# (auto|kubectl|kustomize|python), DEPLOY_TOOLS_VENV, RENDER_OUT (keep the rendered YAML there).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY_DIR=$(cd "${DEPLOY_DIR:-$ROOT/deploy}" && pwd)
DOCKERFILE=${DOCKERFILE:-$ROOT/Dockerfile}
VENV=${DEPLOY_TOOLS_VENV:-$ROOT/.venv-deploy}
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
RENDERER=${RENDERER:-auto}
PYTHON=${PYTHON:-python3}
TOOLS="checkov==3.3.30 kubernetes-validate==1.37.0 yamllint==1.38.0"
FALLBACK="pykustomize==0.1.4 cffi>=1.17"

failed=()
step() { printf '\n==> %s\n' "$*"; }
fail() { failed+=("$1"); printf 'FAILED: %s\n' "$1" >&2; }

install_tools() {
    local stamp="$VENV/.deploy-tools"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$TOOLS" ]]; then
        return 0
    fi
    step "installing $TOOLS into $VENV"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV" || return 1
    # Like Python 3.13's venv: keep the tools venv out of git without touching .gitignore.
    echo '*' > "$VENV/.gitignore"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $TOOLS || return 1
    echo "$TOOLS" > "$stamp"
}

install_promtool() {  # Debian's prometheus package holds a static promtool: unpack only that
    [[ -n ${PROMTOOL:-} ]] && return 0
    PROMTOOL=$(command -v promtool || echo "$VENV/bin/promtool")
    [[ -x $PROMTOOL ]] && return 0
    step "installing promtool (Debian's prometheus package) into $VENV/bin"
    local tmp
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download prometheus > /dev/null 2>&1); then
        [[ $(id -u) == 0 ]] && apt-get update -qq > /dev/null 2>&1
        (cd "$tmp" && apt-get download prometheus > /dev/null) || { rm -rf "$tmp"; return 1; }
    fi
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x" && install -m 0755 "$tmp/x/usr/bin/promtool" "$PROMTOOL"
    local done=$?
    rm -rf "$tmp"
    return $done
}

render() {  # render DIR: the kustomization's YAML on stdout
    local how=$RENDERER
    if [[ $how == auto ]]; then
        if command -v kubectl > /dev/null 2>&1; then how=kubectl
        elif command -v kustomize > /dev/null 2>&1; then how=kustomize
        else how=python
        fi
    fi
    case $how in
        kubectl) kubectl kustomize "$1" ;;
        kustomize) kustomize build "$1" ;;
        python)
            if ! "$VENV/bin/python" -c 'import pykustomize' 2> /dev/null; then
                "$VENV/bin/pip" install --quiet --disable-pip-version-check --ignore-requires-python $FALLBACK \
                    > /dev/null || return 1
            fi
            "$VENV/bin/python" "$ROOT/deploy/render.py" "$1"
            ;;
        *) echo "RENDERER must be auto, kubectl, kustomize or python" >&2; return 2 ;;
    esac
}

install_tools || { echo "could not install the check tools into $VENV" >&2; exit 1; }
OUT=${RENDER_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
[[ -n ${RENDER_OUT:-} ]] || trap 'rm -rf "$OUT"' EXIT

step "yamllint $DEPLOY_DIR"
"$VENV/bin/yamllint" --strict -c "$ROOT/.yamllint" "$DEPLOY_DIR" || fail yamllint
while IFS= read -r json; do
    "$VENV/bin/python" -m json.tool "$json" > /dev/null || fail "json: ${json#"$DEPLOY_DIR"/}"
done < <(find "$DEPLOY_DIR" -name '*.json' -not -path '*/.*')

step "render (renderer: $RENDERER)"
targets=()
for dir in "$DEPLOY_DIR"/overlays/*/ "$DEPLOY_DIR"/strimzi/*/; do
    [[ -f "$dir/kustomization.yaml" ]] && targets+=("${dir%/}")
done
[[ ${#targets[@]} -gt 0 ]] || fail "no kustomization found under $DEPLOY_DIR/overlays or $DEPLOY_DIR/strimzi"
for dir in "${targets[@]}"; do
    rel=${dir#"$DEPLOY_DIR"/}
    file="$OUT/${rel//\//-}.yaml"
    if render "$dir" > "$file"; then
        echo "rendered $rel: $(grep -c '^kind:' "$file") resources"
    else
        fail "render $rel"
        rm -f "$file"
    fi
done

step "kubernetes-validate --strict (Kubernetes $K8S_VERSIONS)"
shopt -s nullglob
rendered=("$OUT"/*.yaml)
if [[ ${#rendered[@]} -gt 0 ]]; then
    for version in $K8S_VERSIONS; do
        "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$version" "${rendered[@]}" \
            || fail "kubernetes-validate $version"
    done
    # Custom resources have no bundled schema; tests/deploy/test_manifests.py checks their content.
    "$VENV/bin/python" - "${rendered[@]}" <<'PY'
import sys, yaml
kinds = sorted({f"{d['kind']} ({d['apiVersion']})" for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))
                if d and "." in d["apiVersion"].split("/")[0] and not d["apiVersion"].split("/")[0].endswith("k8s.io")})
print("not schema-validated (custom resources):", ", ".join(kinds) or "none")
PY
fi

step "checkov (rendered manifests, Dockerfile)"
"$VENV/bin/checkov" --config-file "$ROOT/.checkov.yaml" --framework kubernetes -d "$OUT" || fail "checkov kubernetes"
"$VENV/bin/checkov" --config-file "$ROOT/.checkov.yaml" --framework dockerfile -f "$DOCKERFILE" \
    || fail "checkov dockerfile"

step "promtool (rules and their unit tests)"
if install_promtool; then
    RULES=$(mktemp -d)
    # promtool reads plain rule files: the PrometheusRule's spec, written next to its tests.
    "$VENV/bin/python" -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], sys.stdout)' \
        "$DEPLOY_DIR/monitoring/prometheusrule.yaml" > "$RULES/prometheusrule.rules.yaml" || fail "promtool rules"
    cp "$DEPLOY_DIR/monitoring/prometheusrule.test.yaml" "$RULES/"
    "$PROMTOOL" check rules "$RULES/prometheusrule.rules.yaml" || fail "promtool check rules"
    (cd "$RULES" && "$PROMTOOL" test rules prometheusrule.test.yaml) || fail "promtool test rules"
    rm -rf "$RULES"
else
    fail "promtool: could not install it (Debian's prometheus package); set PROMTOOL to one"
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    printf '\ndeploy-check FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")" >&2
    exit 1
fi
printf '\ndeploy-check passed\n'
