package meshdemo

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func TestChargeOverRealGRPC(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		seen = append(seen, info.FullMethod)
		return h(ctx, req)
	}))
	Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	defer func() { gs.Stop(); <-done }()

	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := Charge(ctx, cc, "order-42")
	if err != nil {
		t.Fatal(err)
	}
	f := out.GetFields()
	if f["result"].GetStringValue() != "charged" || f["order"].GetStringValue() != "order-42" || f["caller"].GetStringValue() != "" {
		t.Errorf("reply %v", out)
	}
	if len(seen) != 1 || seen[0] != MethodCharge {
		t.Errorf("interceptor saw %v, want [%s]", seen, MethodCharge)
	}
	// Another method of the service does not exist.
	err = cc.Invoke(ctx, "/"+ServiceName+"/Refund", out, out)
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("Refund: %v, want Unimplemented", err)
	}
}
