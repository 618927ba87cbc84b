package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/compatibility"
	"k8s.io/klog/v2"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	schedoptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// newComponentGlobals gives a component its own copy of the feature gates and version,
// as Kubernetes' test servers do, so components in one process never register twice.
func newComponentGlobals() (compatibility.ComponentGlobalsRegistry, error) {
	featureGate := utilfeature.DefaultMutableFeatureGate.DeepCopy()
	effectiveVersion := utilcompatibility.DefaultBuildEffectiveVersion()
	registry := compatibility.NewComponentGlobalsRegistry()
	if err := registry.Register(compatibility.DefaultKubeComponent, effectiveVersion, featureGate); err != nil {
		return nil, err
	}
	return registry, nil
}

// startControllerManager runs every default kube-controller-manager controller (job,
// garbage collector, namespace, serviceaccount and its tokens, ttl-after-finished,
// replicaset, deployment, endpoints, endpointslice, persistentvolume binder, node
// lifecycle, ...) with the admin kubeconfig; serving is off (no extra port).
func startControllerManager(ctx context.Context, kubeconfig string, creds credentials, rootCA string) (<-chan struct{}, error) {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	if s.ComponentGlobalsRegistry, err = newComponentGlobals(); err != nil {
		return nil, err
	}
	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range named.FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=*",
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + creds.saKeyFile,
		"--root-ca-file=" + rootCA,
		"--cluster-name=kubeenv",
		// Deleted pods and finished Jobs' pods go away quickly, as tests expect.
		"--terminated-pod-gc-threshold=1000",
		"--concurrent-job-syncs=10",
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s.ParsedFlags = &named
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	c, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := kcmapp.Run(ctx, c.Complete()); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "kube-controller-manager exited")
		}
	}()
	return done, nil
}

// startScheduler runs kube-scheduler with its default profile; serving is off.
func startScheduler(ctx context.Context, kubeconfig string) (<-chan struct{}, error) {
	registry, err := newComponentGlobals()
	if err != nil {
		return nil, err
	}
	opts := schedoptions.NewOptionsWithComponentGlobalsRegistry(registry)
	fs := pflag.NewFlagSet("kube-scheduler", pflag.ContinueOnError)
	for _, f := range opts.Flags.FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	cc, sched, err := schedapp.Setup(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := schedapp.Run(ctx, cc, sched); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "kube-scheduler exited")
		}
	}()
	return done, nil
}
