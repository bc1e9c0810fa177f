package xds

import (
	"context"
	"errors"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// callbacks hooks the go-control-plane server: authentication on stream
// open, node binding and ACK/NACK accounting on requests, nonce recording
// on responses.
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc:      s.onStreamOpen,
		DeltaStreamOpenFunc: s.onStreamOpen,
		StreamClosedFunc:    s.onStreamClosed,
		DeltaStreamClosedFunc: func(id int64, n *corev3.Node) {
			s.onStreamClosed(id, n)
		},
		StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
			var lu *listenerUpdate
			if req.GetTypeUrl() == resourcev3.ListenerType {
				lu = &listenerUpdate{replace: true, subscribe: req.GetResourceNames()}
			}
			nacked, err := s.onRequest(id, req.GetNode(), req.GetResponseNonce(), req.GetErrorDetail(), lu)
			if nacked != "" {
				// The snapshot cache answers at once any request whose
				// version differs from the snapshot's, so a NACK (which
				// carries the last good version) would get the rejected
				// version again, and again. Present the NACK as having seen
				// that version: the next snapshot is sent when it changes.
				req.VersionInfo = nacked
			}
			return err
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			s.onResponse(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
		},
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			var lu *listenerUpdate
			if req.GetTypeUrl() == resourcev3.ListenerType {
				lu = &listenerUpdate{subscribe: req.GetResourceNamesSubscribe(), unsubscribe: req.GetResourceNamesUnsubscribe()}
			}
			_, err := s.onRequest(id, req.GetNode(), req.GetResponseNonce(), req.GetErrorDetail(), lu)
			return err
		},
		StreamDeltaResponseFunc: func(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			s.onResponse(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
		},
	}
}

func (s *Server) onStreamOpen(ctx context.Context, id int64, _ string) error {
	st := &stream{nonces: map[string]sent{}}
	if s.cfg.Authenticator != nil {
		ident, err := s.cfg.Authenticator.Authenticate(ctx)
		if err != nil {
			if !s.cfg.AllowUnauthenticated {
				s.metrics.authFailures.WithLabelValues("unauthenticated").Inc()
				s.log.Warn("xds stream refused", "stream_id", id, "reason", "unauthenticated", "error", err)
				return status.Error(codes.Unauthenticated, err.Error())
			}
		} else {
			st.identity = &ident
		}
	}
	s.nodes.openStream(id, st)
	s.metrics.streams.Inc()
	return nil
}

func (s *Server) onStreamClosed(id int64, _ *corev3.Node) {
	st, nodeID, left := s.nodes.closeStream(id)
	s.metrics.nodes.Set(float64(s.nodes.count()))
	if st != nil {
		s.metrics.streams.Dec()
	}
	switch {
	case nodeID != "" && left == 0:
		s.cache.ClearSnapshot(nodeID)
		now := s.now()
		s.status.update(nodeID, func(ns *NodeStatus) { ns.Connected, ns.Streams, ns.DisconnectedAt = false, 0, now })
		s.status.prune(maxDisconnected)
	case nodeID != "":
		s.status.update(nodeID, func(ns *NodeStatus) { ns.Streams-- })
	}
}

// bind attaches a stream to the node it names after checking that the
// authenticated identity owns that node.
func (s *Server) bind(id int64, st *stream, n *corev3.Node) (*node, error) {
	nodeID := n.GetId()
	ns, pod, ok := strings.Cut(nodeID, "/")
	if !ok || ns == "" || pod == "" || strings.Contains(pod, "/") {
		s.metrics.authFailures.WithLabelValues("unknown_node").Inc()
		return nil, status.Errorf(codes.InvalidArgument, "xds: node id %q is not <namespace>/<pod>", nodeID)
	}
	w, ok := s.cfg.Registry.ByPod(ns, pod)
	if !ok {
		s.metrics.authFailures.WithLabelValues("unknown_node").Inc()
		return nil, status.Errorf(codes.NotFound, "xds: no workload %s", nodeID)
	}
	if st.identity != nil {
		if err := authorize(*st.identity, ns, pod, w.ServiceAccount); err != nil {
			s.metrics.authFailures.WithLabelValues("forbidden_node").Inc()
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		if st.identity.SPIFFEID != "" && st.identity.SPIFFEID != w.SPIFFEID(s.cfg.TrustDomain) {
			s.metrics.authFailures.WithLabelValues("forbidden_node").Inc()
			return nil, status.Error(codes.PermissionDenied, ErrForbiddenNode.Error())
		}
	}
	nd, count := s.nodes.bind(id, st, nodeID, nodeKind(n), w.ServiceAccount)
	s.metrics.nodes.Set(float64(s.nodes.count()))
	spiffe := w.SPIFFEID(s.cfg.TrustDomain)
	s.status.update(nodeID, func(ns *NodeStatus) {
		ns.Kind, ns.SPIFFEID, ns.Connected, ns.Streams = nd.kind, spiffe, true, count
	})
	return nd, nil
}

// listenerUpdate is what a request says about the Listener names a stream
// wants: the whole set (state of the world) or a change (delta).
type listenerUpdate struct {
	replace     bool
	subscribe   []string
	unsubscribe []string
}

// onRequest authenticates and binds the stream, records an ACK or NACK
// and builds for newly requested Listener names. It returns the version a
// NACK rejected.
func (s *Server) onRequest(id int64, n *corev3.Node, nonce string, errDetail *rpcstatus.Status, lu *listenerUpdate) (nacked string, err error) {
	st := s.nodes.stream(id)
	if st == nil {
		return "", errors.New("xds: unknown stream")
	}
	var nd *node
	if st.nodeID == "" {
		if n.GetId() == "" {
			s.metrics.authFailures.WithLabelValues("no_node").Inc()
			return "", status.Error(codes.InvalidArgument, "xds: first request carries no node id")
		}
		if nd, err = s.bind(id, st, n); err != nil {
			s.log.Warn("xds stream refused", "stream_id", id, "node_id", n.GetId(), "reason", err.Error())
			return "", err
		}
	} else {
		// A stream stays bound to its node: switching node IDs would
		// bypass the check above.
		if n.GetId() != "" && n.GetId() != st.nodeID {
			s.metrics.authFailures.WithLabelValues("forbidden_node").Inc()
			return "", status.Errorf(codes.PermissionDenied, "xds: stream is bound to node %s", st.nodeID)
		}
		if nd = s.nodes.get(st.nodeID); nd == nil {
			return "", errors.New("xds: node is gone")
		}
	}
	if nonce != "" {
		nacked = s.recordReply(st, nd.id, nonce, errDetail)
	}
	// Build for the Listener names this node asks for before the cache
	// looks at the request, so the first answer carries them; names no
	// stream of the node wants any more are dropped.
	fresh := lu != nil && s.nodes.subscribe(st, nd, lu)
	nd.mu.Lock()
	first := nd.gen == 0
	nd.mu.Unlock()
	if fresh || first {
		s.rebuild(context.Background(), nd.id)
	}
	return nacked, nil
}

// recordReply books the ACK or NACK of the response with nonce; it
// returns the version a NACK rejected.
func (s *Server) recordReply(st *stream, nodeID, nonce string, errDetail *rpcstatus.Status) string {
	out, ok := s.nodes.takeNonce(st, nonce)
	if !ok {
		return ""
	}
	now := s.now()
	short := shortType(out.typeURL)
	if errDetail != nil {
		msg := errDetail.GetMessage()
		s.metrics.nacks.WithLabelValues(short).Inc()
		s.log.Warn("xds config rejected by node", "node_id", nodeID, "version", out.version, "type_url", out.typeURL, "error", msg)
		s.status.update(nodeID, func(ns *NodeStatus) {
			t := ns.typ(out.typeURL)
			t.Nacked, t.NackedAt, t.NackError = out.version, now, msg
			t.Nacks++
		})
		return out.version
	}
	s.metrics.acks.WithLabelValues(short).Inc()
	s.status.update(nodeID, func(ns *NodeStatus) {
		t := ns.typ(out.typeURL)
		t.Acked, t.AckedAt = out.version, now
		t.Acks++
	})
	return ""
}

func (s *Server) onResponse(id int64, typeURL, nonce, version string) {
	nodeID := s.nodes.recordSent(id, typeURL, nonce, version)
	if nodeID == "" {
		return
	}
	now := s.now()
	s.status.update(nodeID, func(ns *NodeStatus) {
		t := ns.typ(typeURL)
		t.Sent, t.SentAt = version, now
	})
}
