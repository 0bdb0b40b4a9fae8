//go:build tools

// Package controlplane records the main packages this module builds from its
// dependencies, so that `go mod tidy` keeps them in go.mod and go.sum.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
