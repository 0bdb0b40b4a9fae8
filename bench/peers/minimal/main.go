// Command minimal is the least an ext_proc endpoint picker can do, for bench/epp_bench.py:
// it answers request headers with the destination header (and the same value as `envoy.lb`
// dynamic metadata), and every other message with an empty answer of its kind. No discovery,
// no health, no logging: what is left is grpc-go and Envoy's ext_proc protocol.
package main

import (
	"flag"
	"io"
	"log"
	"net"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	pb "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
)

const destination = "x-gateway-destination-endpoint"

type server struct {
	pb.UnimplementedExternalProcessorServer
	pick *pb.ProcessingResponse
}

func (s *server) Process(stream pb.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var answer *pb.ProcessingResponse
		switch req.Request.(type) {
		case *pb.ProcessingRequest_RequestHeaders:
			answer = s.pick
		case *pb.ProcessingRequest_RequestBody:
			answer = &pb.ProcessingResponse{Response: &pb.ProcessingResponse_RequestBody{RequestBody: &pb.BodyResponse{}}}
		case *pb.ProcessingRequest_RequestTrailers:
			answer = &pb.ProcessingResponse{Response: &pb.ProcessingResponse_RequestTrailers{RequestTrailers: &pb.TrailersResponse{}}}
		case *pb.ProcessingRequest_ResponseHeaders:
			answer = &pb.ProcessingResponse{Response: &pb.ProcessingResponse_ResponseHeaders{ResponseHeaders: &pb.HeadersResponse{}}}
		case *pb.ProcessingRequest_ResponseBody:
			answer = &pb.ProcessingResponse{Response: &pb.ProcessingResponse_ResponseBody{ResponseBody: &pb.BodyResponse{}}}
		case *pb.ProcessingRequest_ResponseTrailers:
			answer = &pb.ProcessingResponse{Response: &pb.ProcessingResponse_ResponseTrailers{ResponseTrailers: &pb.TrailersResponse{}}}
		default:
			continue
		}
		if err := stream.Send(answer); err != nil {
			return err
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:9002", "address to serve ext_proc on")
	endpoint := flag.String("endpoint", "", "the model server every request goes to (host:port)")
	flag.Parse()
	metadata, err := structpb.NewStruct(map[string]any{"envoy.lb": map[string]any{destination: *endpoint}})
	if err != nil {
		log.Fatal(err)
	}
	set := []*core.HeaderValueOption{{
		Header:       &core.HeaderValue{Key: destination, RawValue: []byte(*endpoint)},
		AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}}
	pick := &pb.ProcessingResponse{
		Response: &pb.ProcessingResponse_RequestHeaders{RequestHeaders: &pb.HeadersResponse{
			Response: &pb.CommonResponse{HeaderMutation: &pb.HeaderMutation{SetHeaders: set}, ClearRouteCache: true},
		}},
		DynamicMetadata: metadata,
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	pb.RegisterExternalProcessorServer(grpcServer, &server{pick: pick})
	log.Printf("minimal ext_proc serving on %s, every request to %s", listener.Addr(), *endpoint)
	log.Fatal(grpcServer.Serve(listener))
}
