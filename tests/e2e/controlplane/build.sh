#!/usr/bin/env bash
# Builds the Kubernetes control plane the end-to-end tests run against:
#   bin/etcd, bin/kube-apiserver, bin/kubectl
# from the Go modules pinned in go.mod/go.sum (kube-apiserver, kubectl) and
# etcd/go.mod/go.sum (etcd). The one entry point: CI and developers call this.
#
# Module downloads and compiled packages are cached per user in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go
# so a second build is fast. When the binaries are up to date (same pinned
# modules, same sources, same Go) nothing is rebuilt.
#
# Environment:
#   EXTPROC_GUARD_GO_CACHE  cache folder (default above)
#   FORCE=1                 rebuild even when up to date
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
log="$bin/build.log"
stamp_file="$bin/.stamp"

# The newest `go` directive of the two modules: the oldest toolchain that builds both.
required_go() {
    awk '$1 == "go" { print $2 }' "$here/go.mod" "$here/etcd/go.mod" | sort -V | tail -n 1
}

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: Go is not installed (need Go >= $(required_go) on PATH to build etcd, kube-apiserver and kubectl for the e2e tests)" >&2
    exit 1
fi

cache="${EXTPROC_GUARD_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go}"
export GOMODCACHE="$cache/mod"
export GOCACHE="$cache/build"
export GOTOOLCHAIN=local
export GOFLAGS=-mod=readonly
export CGO_ENABLED=0

go_version="$(go env GOVERSION)"
need="$(required_go)"
if [[ "$(printf '%s\n%s\n' "$need" "${go_version#go}" | sort -V | head -n 1)" != "$need" ]]; then
    echo "build.sh: $go_version is too old; building the e2e control plane needs Go >= $need" >&2
    exit 1
fi
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

summary="kube-apiserver+kubectl $kube_version, etcd $etcd_version, $go_version"
if [[ "${FORCE:-0}" != 1 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] &&
    [[ -x "$bin/etcd" && -x "$bin/kube-apiserver" && -x "$bin/kubectl" ]]; then
    echo "control plane up to date in $bin ($summary)"
    exit 0
fi

mkdir -p "$bin"
rm -f "$stamp_file"
: >"$log"

# kube-apiserver reads component-base's version, kubectl reads client-go's.
minor="${kube_version#v1.}"
minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

fail() {
    echo "build.sh: $1 failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
}

echo "building control plane ($summary) into $bin; log: $log"
start=$SECONDS
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver ./cmd/kubectl) >>"$log" 2>&1 ||
    fail "building kube-apiserver and kubectl"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .) >>"$log" 2>&1 ||
    fail "building etcd"

echo "$stamp" >"$stamp_file"
echo "control plane built in $((SECONDS - start))s ($summary)"
