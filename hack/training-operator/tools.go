//go:build tools

// Package tools pins Kubeflow's training-operator manager, which `build` compiles from the module cache.
package tools

import _ "github.com/kubeflow/training-operator/cmd/training-operator.v1"
