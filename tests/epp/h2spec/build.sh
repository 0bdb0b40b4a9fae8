#!/usr/bin/env bash
# Builds h2spec, the HTTP/2 conformance tester tests/epp/test_h2spec.py runs against the
# EPP's own HTTP/2 transport:
#   bin/h2spec
# from the Go module pinned in go.mod/go.sum. The one entry point: CI and developers call this.
#
# Module downloads and compiled packages are cached per user in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go
# (the cache the e2e control plane's build uses too), so a second build is fast. When the
# binary is up to date (same pinned modules, same Go) nothing is rebuilt.
#
# Environment:
#   EXTPROC_GUARD_GO_CACHE  cache folder (default above)
#   FORCE=1                 rebuild even when up to date
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
log="$bin/build.log"
stamp_file="$bin/.stamp"

required_go="$(awk '$1 == "go" { print $2 }' "$here/go.mod")"

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: Go is not installed (need Go >= $required_go on PATH to build h2spec for the EPP's HTTP/2 conformance test)" >&2
    exit 1
fi

cache="${EXTPROC_GUARD_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go}"
export GOMODCACHE="$cache/mod"
export GOCACHE="$cache/build"
export GOTOOLCHAIN=local
export GOFLAGS=-mod=readonly
export CGO_ENABLED=0

go_version="$(go env GOVERSION)"
if [[ "$(printf '%s\n%s\n' "$required_go" "${go_version#go}" | sort -V | head -n 1)" != "$required_go" ]]; then
    echo "build.sh: $go_version is too old; building h2spec needs Go >= $required_go" >&2
    exit 1
fi
module="github.com/summerwind/h2spec"
version="$(awk -v m="$module" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$here/go.mod")"

stamp="$(
    {
        echo "$go_version $version"
        cat "$here/go.mod" "$here/go.sum" "$here/tools.go" "$here/build.sh"
    } | sha256sum | cut -d' ' -f1
)"

summary="h2spec $version, $go_version"
if [[ "${FORCE:-0}" != 1 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" && -x "$bin/h2spec" ]]; then
    echo "h2spec up to date in $bin ($summary)"
    exit 0
fi

mkdir -p "$bin"
rm -f "$stamp_file"
: >"$log"

# h2spec prints main.VERSION with --version; its release builds set it the same way.
release="${version#v}"
release="${release%+incompatible}"
echo "building $summary into $bin; log: $log"
start=$SECONDS
if ! (cd "$here" && go build -trimpath -ldflags "-s -w -X main.VERSION=$release -X main.COMMIT=$version" \
    -o "$bin/" "$module/cmd/h2spec") >>"$log" 2>&1; then
    echo "build.sh: building h2spec failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
fi

echo "$stamp" >"$stamp_file"
echo "h2spec built in $((SECONDS - start))s ($summary)"
