//go:build tools

// Package tools pins the upstream kube-proxy built by tierserve/dev/controlplane/node.py.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
