//go:build tools

// Package tools pins the helm command built by tierserve/testing/controlplane.py
// (go build helm.sh/helm/v3/cmd/helm). Nothing here is tierserve code; see e2e/README.md.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
