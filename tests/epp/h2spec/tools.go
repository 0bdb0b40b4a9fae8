//go:build tools

// Package h2spec records the main package this module builds from its
// dependencies, so that `go mod tidy` keeps it in go.mod and go.sum.
package h2spec

import (
	_ "github.com/summerwind/h2spec/cmd/h2spec"
)
