#!/usr/bin/env bash
# Builds the Kubernetes control plane the end-to-end tests run against:
#   bin/etcd, bin/kube-apiserver, bin/kubectl
# from the Go modules pinned in go.mod/go.sum (kube-apiserver, kubectl) and
# etcd/go.mod/go.sum (etcd), and places the real CRDs the tests install:
#   bin/crds/istio/customresourcedefinitions.gen.yaml   (istio.io/api)
#   bin/crds/gie/*_inferencepools.yaml                  (sigs.k8s.io/gateway-api-inference-extension)
# taken from the Go modules pinned in crds.pins. The one entry point: CI and
# developers call this.
#
# Module downloads and compiled packages are cached per user in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go
# so a second build is fast. When the binaries are up to date (same pinned
# modules, same sources, same Go) nothing is rebuilt; the CRDs have their own
# stamp, so a change of crds.pins fetches them again without relinking.
#
# Environment:
#   EXTPROC_GUARD_GO_CACHE  cache folder (default above)
#   FORCE=1                 rebuild even when up to date
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
crds="$bin/crds"
pins="$here/crds.pins"
log="$bin/build.log"
stamp_file="$bin/.stamp"
crds_stamp_file="$crds/.stamp"

# shellcheck source=../../gotoolchain.sh
source "$here/../../gotoolchain.sh"
use_go "to build etcd, kube-apiserver and kubectl and fetch the CRDs for the e2e tests" \
    "building the e2e control plane" "$here/go.mod" "$here/etcd/go.mod"
# The version go.mod requires for a module, in a `require (...)` block or on one `require` line.
module_version() {
    awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}
kube_version="$(module_version "$here/go.mod" k8s.io/kubernetes)"
etcd_version="$(module_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"

stamp="$(
    {
        echo "$go_version $kube_version $etcd_version"
        cat "$here/go.mod" "$here/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum" \
            "$here/cmd/kubectl/main.go" "$here/etcd/main.go" "$here/build.sh"
    } | sha256sum | cut -d' ' -f1
)"

# The pinned CRD modules, one "MODULE VERSION HASH" line each (comments and blank lines skipped).
crd_pins() {
    awk '$1 !~ /^#/ && NF { print $1, $2, $3 }' "$pins"
}
crds_summary="$(crd_pins | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')"
crds_stamp="$(cat "$pins" "$here/build.sh" | sha256sum | cut -d' ' -f1)"

summary="kube-apiserver+kubectl $kube_version, etcd $etcd_version, $go_version"
binaries_fresh() {
    [[ "${FORCE:-0}" != 1 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] &&
        [[ -x "$bin/etcd" && -x "$bin/kube-apiserver" && -x "$bin/kubectl" ]]
}
crds_fresh() {
    [[ "${FORCE:-0}" != 1 && -f "$crds_stamp_file" && "$(cat "$crds_stamp_file")" == "$crds_stamp" ]]
}
if binaries_fresh && crds_fresh; then
    echo "control plane up to date in $bin ($summary; CRDs from $crds_summary)"
    exit 0
fi

mkdir -p "$bin"
: >"$log"

fail() {
    echo "build.sh: $1 failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
}

# One field of the JSON object `go mod download -json` prints (string values only).
json_field() {
    awk -F'"' -v key="$2" '$2 == key { print $4; exit }' <<<"$1"
}

# Downloads each pinned module through the Go module proxy into GOMODCACHE, checks its
# hash, and copies the CRD files the tests use into a fresh bin/crds.
fetch_crds() {
    local module version want json dir got
    staging="$(mktemp -d "$bin/.crds.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    mkdir -p "$staging/istio" "$staging/gie"
    while read -r module version want; do
        json="$(cd "$here" && go mod download -json "$module@$version" 2>>"$log")" || {
            echo "$json" >>"$log"
            fail "downloading $module@$version"
        }
        dir="$(json_field "$json" Dir)"
        got="$(json_field "$json" Sum)"
        if [[ "$got" != "$want" ]]; then
            echo "$module@$version: downloaded hash $got, crds.pins says $want" >>"$log"
            fail "checking $module@$version"
        fi
        case "$module" in
        istio.io/api)
            cp "$dir/kubernetes/customresourcedefinitions.gen.yaml" "$staging/istio/" 2>>"$log" ;;
        sigs.k8s.io/gateway-api-inference-extension)
            # The v1 InferencePool, and the v1alpha2 one where the module still ships it.
            cp "$dir"/config/crd/bases/inference.networking*_inferencepools.yaml "$staging/gie/" 2>>"$log" ;;
        *)
            echo "crds.pins: no CRD files are known for $module" >>"$log"
            false ;;
        esac || fail "taking the CRDs from $module@$version"
    done < <(crd_pins)
    chmod -R u+w,a+rX "$staging"
    echo "$crds_stamp" >"$staging/.stamp"
    rm -rf "$crds"
    mv "$staging" "$crds"
    trap - EXIT
}

if ! binaries_fresh; then
    rm -f "$stamp_file"

    # kube-apiserver reads component-base's version, kubectl reads client-go's.
    minor="${kube_version#v1.}"
    minor="${minor%%.*}"
    build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    done

    echo "building control plane ($summary) into $bin; log: $log"
    start=$SECONDS
    (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver ./cmd/kubectl) >>"$log" 2>&1 ||
        fail "building kube-apiserver and kubectl"
    (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .) >>"$log" 2>&1 ||
        fail "building etcd"

    echo "$stamp" >"$stamp_file"
    echo "control plane built in $((SECONDS - start))s ($summary)"
fi

if ! crds_fresh; then
    fetch_crds
    echo "CRDs placed in $crds ($crds_summary)"
fi
