//go:build tools

// Package tools pins CoreDNS, the cluster DNS of a local node (tierserve/dev/controlplane/dns.py).
package tools

import (
	_ "github.com/coredns/coredns"
)
