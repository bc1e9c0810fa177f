package kube

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// EventSink records alerts as Warning Events on the offending pod, so
// `kubectl describe pod` and event pipelines show them. Alerts without a
// pod (unknown source IPs) are skipped.
type EventSink struct {
	Client kubernetes.Interface
	// Component names the reporter (default kordon-node).
	Component string
	Node      string
}

var _ alert.Sink = (*EventSink)(nil)

// Deliver implements alert.Sink.
func (e *EventSink) Deliver(ctx context.Context, a alert.Alert) error {
	if a.Pod == "" || a.Namespace == "" {
		return nil
	}
	comp := e.Component
	if comp == "" {
		comp = "kordon-node"
	}
	reason := map[string]string{alert.KindExfiltration: "DNSExfiltration", alert.KindTunneling: "DNSTunneling",
		alert.KindQuarantine: "DNSQuarantine", alert.KindBlocked: "DNSBlocked"}[a.Kind]
	if reason == "" {
		reason = "EgressAlert"
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.kordon-%d", a.Pod, a.ID), Namespace: a.Namespace},
		InvolvedObject:      corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: a.Namespace, Name: a.Pod},
		Reason:              reason,
		Message:             strings.TrimSpace(fmt.Sprintf("%s (%s, domain %s, action %s) %s", a.Kind, a.Severity, a.Domain, a.Action, a.Message)),
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: comp, Host: e.Node},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: "kordon.dev/" + comp,
		ReportingInstance:   e.Node,
	}
	_, err := e.Client.CoreV1().Events(a.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil // delivered before a restart: at-least-once becomes once
	}
	return err
}
