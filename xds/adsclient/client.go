// Package adsclient is a minimal state-of-the-world ADS client: it
// subscribes to resource names, receives responses and ACKs or NACKs them
// by nonce, as a data plane does. kordon uses it in tests (SDS and NACK at
// the protocol level), in the xDS benchmark (many simulated nodes) and for
// debugging a control plane.
package adsclient

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Client is one ADS stream. Methods are safe for concurrent use, but only
// one goroutine may call Recv.
type Client struct {
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc

	mu    sync.Mutex
	node  *corev3.Node
	sent  bool
	types map[string]*typeState
}

type typeState struct {
	names   []string
	version string
	nonce   string
}

// Open opens an ADS stream on conn for node. Extra call options (for
// example per-RPC credentials) apply to the stream.
func Open(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node, opts ...grpc.CallOption) (*Client, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, opts...)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("adsclient: %w", err)
	}
	return &Client{stream: st, cancel: cancel, node: node, types: map[string]*typeState{}}, nil
}

// Close ends the stream.
func (c *Client) Close() { c.cancel() }

// Subscribe asks for names of typeURL (none: wildcard).
func (c *Client) Subscribe(typeURL string, names ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.types[typeURL]
	if ts == nil {
		ts = &typeState{}
		c.types[typeURL] = ts
	}
	ts.names = names
	return c.sendLocked(typeURL, ts, nil)
}

func (c *Client) sendLocked(typeURL string, ts *typeState, detail *rpcstatus.Status) error {
	req := &discoveryv3.DiscoveryRequest{
		TypeUrl:       typeURL,
		ResourceNames: ts.names,
		VersionInfo:   ts.version,
		ResponseNonce: ts.nonce,
		ErrorDetail:   detail,
	}
	// The node goes in the first request of the stream only, as Envoy's
	// set_node_on_first_message_only.
	if !c.sent {
		req.Node = c.node
		c.sent = true
	}
	if err := c.stream.Send(req); err != nil {
		return fmt.Errorf("adsclient: send: %w", err)
	}
	return nil
}

// Recv waits for the next response.
func (c *Client) Recv() (*discoveryv3.DiscoveryResponse, error) {
	resp, err := c.stream.Recv()
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Ack accepts resp: its version becomes the type's current version.
func (c *Client) Ack(resp *discoveryv3.DiscoveryResponse) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.state(resp.GetTypeUrl())
	ts.version, ts.nonce = resp.GetVersionInfo(), resp.GetNonce()
	return c.sendLocked(resp.GetTypeUrl(), ts, nil)
}

// Nack rejects resp with reason; the type keeps its previous version.
func (c *Client) Nack(resp *discoveryv3.DiscoveryResponse, reason string) error {
	if reason == "" {
		return errors.New("adsclient: a NACK needs a reason")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.state(resp.GetTypeUrl())
	ts.nonce = resp.GetNonce()
	return c.sendLocked(resp.GetTypeUrl(), ts, &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: reason})
}

func (c *Client) state(typeURL string) *typeState {
	ts := c.types[typeURL]
	if ts == nil {
		ts = &typeState{}
		c.types[typeURL] = ts
	}
	return ts
}
