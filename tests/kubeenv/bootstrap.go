package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

const (
	// provisionerName is the StorageClass provisioner our in-process provisioner serves.
	provisionerName = "kubeenv.axolotl.ai/local-dir"
	// nodeManagedAnnotation marks the nodes kwok manages (kwok's own convention).
	nodeManagedAnnotation = "kwok.x-k8s.io/node"
	// nodeIPAnnotation carries the loopback address the kwok node stage reports.
	nodeIPAnnotation = "kwok.axolotl.ai/node-ip"
	gpuResource      = corev1.ResourceName("nvidia.com/gpu")
)

func nodeName(i int) string { return fmt.Sprintf("kwok-gpu-%d", i) }

// desiredNodes describes the fake GPU nodes; capacity is set at creation like a kubelet
// registering itself, and addresses/pod CIDRs are in 127.0.0.0/8.
func desiredNodes(cfg config) []*corev1.Node {
	var nodes []*corev1.Node
	for i := range cfg.nodes {
		capacity := corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(cfg.nodeCPU),
			corev1.ResourceMemory: resource.MustParse(cfg.nodeMemory),
			corev1.ResourcePods:   resource.MustParse(cfg.nodePods),
			gpuResource:           *resource.NewQuantity(int64(cfg.gpusPerNode), resource.DecimalSI),
		}
		name := nodeName(i)
		nodes = append(nodes, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name: name,
				Labels: map[string]string{
					"kubernetes.io/hostname":           name,
					"kubernetes.io/os":                 "linux",
					"kubernetes.io/arch":               "amd64",
					"type":                             "kwok",
					"nvidia.com/gpu.present":           "true",
					"nvidia.com/gpu.count":             fmt.Sprint(cfg.gpusPerNode),
					"node.kubernetes.io/instance-type": "kwok-gpu",
				},
				Annotations: map[string]string{
					nodeManagedAnnotation: "fake",
					nodeIPAnnotation:      fmt.Sprintf("127.0.1.%d", i+1),
				},
			},
			Spec: corev1.NodeSpec{
				PodCIDR:  fmt.Sprintf("127.64.%d.0/24", i),
				PodCIDRs: []string{fmt.Sprintf("127.64.%d.0/24", i)},
			},
			Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
		})
	}
	return nodes
}

func storageClasses() []*storagev1.StorageClass {
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	immediate := storagev1.VolumeBindingImmediate
	del := corev1.PersistentVolumeReclaimDelete
	return []*storagev1.StorageClass{
		{
			ObjectMeta: metav1.ObjectMeta{
				Name:        "standard",
				Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
			},
			Provisioner:       provisionerName,
			ReclaimPolicy:     &del,
			VolumeBindingMode: &wffc,
		},
		{
			ObjectMeta:        metav1.ObjectMeta{Name: "standard-immediate"},
			Provisioner:       provisionerName,
			ReclaimPolicy:     &del,
			VolumeBindingMode: &immediate,
		},
	}
}

// bootstrap creates the storage classes and fake nodes; existing objects are kept.
func bootstrap(ctx context.Context, client kubernetes.Interface, cfg config) error {
	for _, sc := range storageClasses() {
		if _, err := client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	if cfg.realNodes > 0 {
		// Without the Node authorizer, kubelets (group system:nodes) get the system:node role.
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeenv:nodes"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:nodes"}},
		}
		if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	if cfg.kwokPath == "" {
		return nil
	}
	for _, n := range desiredNodes(cfg) {
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// waitClusterReady waits until /readyz is ok, the default ServiceAccount exists (so pods
// can be created) and every fake node is Ready (so pods can be scheduled and run).
func waitClusterReady(ctx context.Context, client kubernetes.Interface, cfg config, apiErr <-chan error, kwok *childProcess, real *realCluster) error {
	var waiting string
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-apiErr:
			return false, err
		case <-kwok.done():
			return false, fmt.Errorf("kwok exited, see kwok.log")
		case <-real.exited():
			return false, fmt.Errorf("a real-node process exited, see its log in %s", cfg.stateDir)
		default:
		}
		if _, err := client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
			waiting = "/readyz"
			return false, nil
		}
		if _, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			waiting = "default ServiceAccount"
			return false, nil
		}
		var names []string
		if kwok != nil {
			for i := range cfg.nodes {
				names = append(names, nodeName(i))
			}
		}
		for _, n := range realNodesOf(cfg) {
			names = append(names, n.name)
		}
		for _, name := range names {
			n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil || !nodeReady(n) {
				waiting = "node " + name + " Ready"
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w (waiting for %s)", err, waiting)
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
