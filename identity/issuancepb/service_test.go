package issuancepb

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestServiceMatchesProto: the hand-written gRPC binding names the service
// and methods issuance.proto declares, with its request and response types.
func TestServiceMatchesProto(t *testing.T) {
	svcs := File_identity_issuancepb_issuance_proto.Services()
	if svcs.Len() != 1 {
		t.Fatalf("issuance.proto declares %d services, the binding one", svcs.Len())
	}
	svc := svcs.Get(0)
	if got := string(svc.FullName()); got != Issuance_ServiceDesc.ServiceName {
		t.Errorf("service %q in the proto, %q in the binding", got, Issuance_ServiceDesc.ServiceName)
	}
	if Issuance_ServiceDesc.Metadata != svc.ParentFile().Path() {
		t.Errorf("metadata %q, proto file %q", Issuance_ServiceDesc.Metadata, svc.ParentFile().Path())
	}
	methods := svc.Methods()
	if methods.Len() != len(Issuance_ServiceDesc.Methods) || len(Issuance_ServiceDesc.Streams) != 0 {
		t.Fatalf("%d methods in the proto, %d unary and %d streams in the binding", methods.Len(), len(Issuance_ServiceDesc.Methods), len(Issuance_ServiceDesc.Streams))
	}
	sign := methods.ByName("Sign")
	if sign == nil || sign.IsStreamingClient() || sign.IsStreamingServer() {
		t.Fatal("issuance.proto has no unary Sign")
	}
	if Issuance_ServiceDesc.Methods[0].MethodName != "Sign" || Issuance_Sign_FullMethodName != "/"+string(svc.FullName())+"/Sign" {
		t.Errorf("binding names %q, %q", Issuance_ServiceDesc.Methods[0].MethodName, Issuance_Sign_FullMethodName)
	}
	for what, pair := range map[string][2]protoreflect.FullName{
		"input":  {sign.Input().FullName(), (&SignRequest{}).ProtoReflect().Descriptor().FullName()},
		"output": {sign.Output().FullName(), (&SignResponse{}).ProtoReflect().Descriptor().FullName()},
	} {
		if pair[0] != pair[1] {
			t.Errorf("Sign %s %s in the proto, %s in the binding", what, pair[0], pair[1])
		}
	}
}
