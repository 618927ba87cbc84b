package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

const (
	selectedNodeAnnotation  = "volume.kubernetes.io/selected-node"
	provisionedByAnnotation = "pv.kubernetes.io/provisioned-by"
)

// provisioner is a minimal dynamic provisioner for the kubeenv StorageClasses: for each
// unbound claim of such a class (once the scheduler picked a node, for
// WaitForFirstConsumer) it creates a hostPath PV on a directory under the state dir,
// pre-bound to the claim; the persistentvolume-binder controller then binds them. A
// Released PV with reclaim policy Delete is deleted together with its directory.
type provisioner struct {
	client  kubernetes.Interface
	classes cache.Indexer
	baseDir string
}

func startProvisioner(ctx context.Context, restCfg *rest.Config, baseDir string) <-chan struct{} {
	done := make(chan struct{})
	client := kubernetes.NewForConfigOrDie(restCfg)
	factory := informers.NewSharedInformerFactory(client, 30*time.Second)
	classInformer := factory.Storage().V1().StorageClasses().Informer()
	p := &provisioner{client: client, classes: classInformer.GetIndexer(), baseDir: baseDir}

	claimHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.syncClaim(ctx, obj) },
		UpdateFunc: func(_, obj any) { p.syncClaim(ctx, obj) },
	}
	volumeHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.syncVolume(ctx, obj) },
		UpdateFunc: func(_, obj any) { p.syncVolume(ctx, obj) },
	}
	if _, err := factory.Core().V1().PersistentVolumeClaims().Informer().AddEventHandler(claimHandler); err != nil {
		klog.ErrorS(err, "provisioner: claim handler")
	}
	if _, err := factory.Core().V1().PersistentVolumes().Informer().AddEventHandler(volumeHandler); err != nil {
		klog.ErrorS(err, "provisioner: volume handler")
	}
	go func() {
		defer close(done)
		factory.Start(ctx.Done())
		factory.WaitForCacheSync(ctx.Done())
		<-ctx.Done()
		factory.Shutdown()
	}()
	return done
}

func (p *provisioner) syncClaim(ctx context.Context, obj any) {
	pvc, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok || pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil || pvc.Spec.StorageClassName == nil {
		return
	}
	item, exists, err := p.classes.GetByKey(*pvc.Spec.StorageClassName)
	if err != nil || !exists {
		return
	}
	class := item.(*storagev1.StorageClass)
	if class.Provisioner != provisionerName {
		return
	}
	node := pvc.Annotations[selectedNodeAnnotation]
	if class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer && node == "" {
		return
	}
	pv := volumeFor(pvc, class, node, p.baseDir)
	if err := os.MkdirAll(pv.Spec.HostPath.Path, 0o777); err != nil {
		klog.ErrorS(err, "provisioner: create directory", "path", pv.Spec.HostPath.Path)
		return
	}
	if _, err := p.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		klog.ErrorS(err, "provisioner: create PV", "claim", pvc.Namespace+"/"+pvc.Name)
		return
	}
	klog.InfoS("provisioner: created PV", "pv", pv.Name, "claim", pvc.Namespace+"/"+pvc.Name, "node", node)
}

// volumeFor is the PV for a claim: same size, modes and class, pre-bound to the claim,
// and pinned to the selected node when there is one (like a local volume on kind).
func volumeFor(pvc *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, node, baseDir string) *corev1.PersistentVolume {
	name := "pvc-" + string(pvc.UID)
	reclaim := corev1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		reclaim = *class.ReclaimPolicy
	}
	hostPathType := corev1.HostPathDirectoryOrCreate
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{provisionedByAnnotation: provisionerName},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              class.Name,
			VolumeMode:                    pvc.Spec.VolumeMode,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: filepath.Join(baseDir, name), Type: &hostPathType},
			},
		},
	}
	if node != "" {
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
				Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{node},
			}}}},
		}}
	}
	return pv
}

func (p *provisioner) syncVolume(ctx context.Context, obj any) {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok || pv.Annotations[provisionedByAnnotation] != provisionerName || pv.DeletionTimestamp != nil {
		return
	}
	if pv.Status.Phase != corev1.VolumeReleased || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		return
	}
	if pv.Spec.HostPath != nil && filepath.Dir(pv.Spec.HostPath.Path) == p.baseDir {
		if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
			klog.ErrorS(err, "provisioner: remove directory", "path", pv.Spec.HostPath.Path)
			return
		}
	}
	if err := p.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		klog.ErrorS(err, "provisioner: delete PV", "pv", pv.Name)
		return
	}
	klog.InfoS("provisioner: deleted released PV", "pv", pv.Name)
}
