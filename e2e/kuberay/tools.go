//go:build tools

// Package tools pins the KubeRay operator built (optionally) by tierserve/testing/controlplane.py
// (go build github.com/ray-project/kuberay/ray-operator). Nothing here is tierserve code; see
// e2e/README.md.
package tools

import (
	_ "github.com/ray-project/kuberay/ray-operator"
)
