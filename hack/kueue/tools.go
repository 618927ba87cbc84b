//go:build tools

// Package tools pins Kueue's controller manager, which `build` compiles from the module cache.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
