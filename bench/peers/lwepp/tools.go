//go:build tools

// Package lwepp records the main package this module builds from its dependency
// (GIE's reference picker, ./cmd/lwepp), so that `go mod tidy` keeps it in go.mod and go.sum.
package lwepp

import (
	_ "sigs.k8s.io/gateway-api-inference-extension/cmd/lwepp"
)
