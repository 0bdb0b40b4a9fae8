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

# shellcheck source=../../gotoolchain.sh
source "$here/../../gotoolchain.sh"
use_go "to build h2spec for the EPP's HTTP/2 conformance test" "building h2spec" "$here/go.mod"
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
