#!/usr/bin/env bash
# Builds the two ext_proc servers bench/epp_bench.py measures beside the EPP:
#   bin/lwepp     the Gateway API Inference Extension's reference picker (./cmd/lwepp of
#                 sigs.k8s.io/gateway-api-inference-extension, pinned in lwepp/go.mod and go.sum)
#   bin/minimal   the least an ext_proc picker can do, in grpc-go (minimal/main.go; the same grpc-go
#                 and Envoy protos as lwepp, pinned in minimal/go.mod and go.sum)
# Benchmark tooling only: `make test` does not run it; bench/epp_bench.py runs it when a binary is
# missing or out of date.
#
# Module downloads and compiled packages are cached per user in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go
# (the cache the e2e control plane's build uses too), so a second build is fast. When the binaries
# are up to date (same pinned modules, same sources, same Go) nothing is rebuilt.
#
# Environment:
#   EXTPROC_GUARD_GO_CACHE  cache folder (default above)
#   FORCE=1                 rebuild even when up to date
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
log="$bin/build.log"
stamp_file="$bin/.stamp"

# shellcheck source=../../tests/gotoolchain.sh
source "$here/../../tests/gotoolchain.sh"
use_go "to build lwepp and the minimal ext_proc server for bench/epp_bench.py" \
    "building the benchmark's peers" "$here/lwepp/go.mod" "$here/minimal/go.mod"
module="sigs.k8s.io/gateway-api-inference-extension"
gie_version="$(awk -v m="$module" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$here/lwepp/go.mod")"
grpc_version="$(awk '$1 == "google.golang.org/grpc" { print $2; exit }' "$here/minimal/go.mod")"

stamp="$(
    {
        echo "$go_version $gie_version"
        cat "$here/lwepp/go.mod" "$here/lwepp/go.sum" "$here/lwepp/tools.go" \
            "$here/minimal/go.mod" "$here/minimal/go.sum" "$here/minimal/main.go" "$here/build.sh"
    } | sha256sum | cut -d' ' -f1
)"

summary="lwepp $gie_version, minimal on grpc-go $grpc_version, $go_version"
if [[ "${FORCE:-0}" != 1 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" &&
    -x "$bin/lwepp" && -x "$bin/minimal" ]]; then
    echo "benchmark peers up to date in $bin ($summary)"
    exit 0
fi

mkdir -p "$bin"
rm -f "$stamp_file"
: >"$log"

fail() {
    echo "build.sh: $1 failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
}

echo "building benchmark peers ($summary) into $bin; log: $log"
start=$SECONDS
(cd "$here/lwepp" && go build -trimpath -ldflags "-s -w" -o "$bin/lwepp" "$module/cmd/lwepp") >>"$log" 2>&1 ||
    fail "building lwepp"
(cd "$here/minimal" && go build -trimpath -ldflags "-s -w" -o "$bin/minimal" .) >>"$log" 2>&1 ||
    fail "building the minimal ext_proc server"

echo "$stamp" >"$stamp_file"
echo "benchmark peers built in $((SECONDS - start))s ($summary)"
