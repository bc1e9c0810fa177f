// Package kube connects kordon to the Kubernetes API: it fills the
// workload registry from Pods, loads AuthorizationPolicies,
// RequestAuthentications and EgressPolicies from their CRDs (with status
// conditions), reviews service-account tokens, and stores the CA in a
// Secret. It is the only
// package besides cmd that imports client-go.
package kube

import (
	"fmt"
	"net/netip"

	"github.com/kordon-dev/kordon/internal/workload"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Clients bundles the typed and dynamic clients.
type Clients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	Config  *rest.Config
}

// NewClients builds clients from a kubeconfig path, or from the in-cluster
// service account when the path is empty.
func NewClients(kubeconfig string) (*Clients, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return ClientsFor(cfg)
}

// ClientsFor builds clients from a rest.Config.
func ClientsFor(cfg *rest.Config) (*Clients, error) {
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return &Clients{Kube: k, Dynamic: d, Config: cfg}, nil
}

// WorkloadFromPod converts a Pod to a registry Workload. Pods that have
// finished (Succeeded, Failed) return nil: their IPs may be reused.
func WorkloadFromPod(p *corev1.Pod) *workload.Workload {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil && p.Spec.NodeName == "" {
		return nil
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	w := &workload.Workload{Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa, Labels: p.Labels, Node: p.Spec.NodeName, UID: string(p.UID)}
	seen := map[netip.Addr]bool{}
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !seen[ip] {
			seen[ip] = true
			w.IPs = append(w.IPs, ip)
		}
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	add(p.Status.PodIP)
	// hostNetwork pods share the node's IP: attributing DNS by source IP
	// would blame the wrong workload, so they get no IPs.
	if p.Spec.HostNetwork {
		w.IPs = nil
	}
	return w
}
