# Sourced by the scripts that build Go binaries for the tests and benchmarks
# (tests/e2e/controlplane/build.sh, tests/epp/h2spec/build.sh, bench/peers/build.sh).
#
# use_go TO_WHAT BUILDING_WHAT GO_MOD...
#   Exits 1 with one line unless a local Go at least as new as the newest `go` directive of the
#   GO_MOD files is on PATH ("Go is not installed (need Go >= V on PATH TO_WHAT)", "GOVERSION is too
#   old; BUILDING_WHAT needs Go >= V"). Then builds with that toolchain only, read-only modules and
#   no cgo, with its module and build caches in EXTPROC_GUARD_GO_CACHE (default
#   ${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go), which all the builds share. Sets go_version
#   (`go env GOVERSION`) for the caller's stamps and summaries.

use_go() {
    local to_what="$1" building_what="$2"
    shift 2
    local need
    need="$(awk '$1 == "go" { print $2 }' "$@" | sort -V | tail -n 1)"
    if ! command -v go >/dev/null 2>&1; then
        echo "build.sh: Go is not installed (need Go >= $need on PATH $to_what)" >&2
        exit 1
    fi
    local cache="${EXTPROC_GUARD_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/extproc-guard/go}"
    export GOMODCACHE="$cache/mod"
    export GOCACHE="$cache/build"
    export GOTOOLCHAIN=local
    export GOFLAGS=-mod=readonly
    export CGO_ENABLED=0
    go_version="$(go env GOVERSION)"
    if [[ "$(printf '%s\n%s\n' "$need" "${go_version#go}" | sort -V | head -n 1)" != "$need" ]]; then
        echo "build.sh: $go_version is too old; $building_what needs Go >= $need" >&2
        exit 1
    fi
}
