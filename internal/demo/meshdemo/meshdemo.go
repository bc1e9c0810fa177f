// Package meshdemo is the gRPC service the dev demo calls between
// workloads: the shop's payments API (shop.payments.v1.Payments/Charge),
// defined by hand with well-known protobuf messages so that it needs no
// generated code. Served and called through proxyless gRPC xDS, it shows
// kordon's AuthorizationPolicies enforced on real RPCs: the checkout may
// charge, the compromised batch worker gets PermissionDenied.
package meshdemo

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the service and its method, as RBAC sees them (the HTTP/2 path).
const (
	ServiceName  = "shop.payments.v1.Payments"
	MethodCharge = "/" + ServiceName + "/Charge"
)

// serviceDesc describes the Payments service for grpc.Server.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Charge",
		Handler: func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(structpb.Struct)
			if err := dec(in); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return charge(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: nil, FullMethod: MethodCharge}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return charge(ctx, req.(*structpb.Struct))
			})
		},
	}},
	Metadata: "kordon/internal/demo/meshdemo",
}

// Register adds the Payments service to s.
func Register(s grpc.ServiceRegistrar) {
	s.RegisterService(&serviceDesc, struct{}{})
}

// charge answers a Charge: the order, and who called, as the server saw the
// caller's certificate.
func charge(ctx context.Context, in *structpb.Struct) (*structpb.Struct, error) {
	return structpb.NewStruct(map[string]any{
		"result": "charged",
		"order":  in.GetFields()["order"].GetStringValue(),
		"caller": PeerID(ctx),
	})
}

// Charge calls Payments/Charge for order over cc.
func Charge(ctx context.Context, cc grpc.ClientConnInterface, order string, opts ...grpc.CallOption) (*structpb.Struct, error) {
	in, err := structpb.NewStruct(map[string]any{"order": order})
	if err != nil {
		return nil, err
	}
	out := new(structpb.Struct)
	if err := cc.Invoke(ctx, MethodCharge, in, out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}

// PeerID returns the URI SAN (the SPIFFE ID) of the peer's certificate, or
// "" when the connection is not mutual TLS.
func PeerID(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	return AuthInfoID(p.AuthInfo)
}

// AuthInfoID returns the SPIFFE ID in a TLS AuthInfo, or "".
func AuthInfoID(ai credentials.AuthInfo) string {
	info, ok := ai.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return ""
	}
	uris := info.State.PeerCertificates[0].URIs
	if len(uris) == 0 {
		return ""
	}
	return fmt.Sprint(uris[0])
}
