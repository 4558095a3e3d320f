// A bare grpc-go server that answers every unary call, whatever its method, with the same
// bytes: the latency floor of the load generator and the machine, beside grpcio's servers
// (loadtest/p99_floor.py). Usage: goecho HOST:PORT REPLY_HEX; prints "serving" when it
// listens.
package main

import (
	"encoding/hex"
	"fmt"
	"log"
	"net"
	"os"

	"google.golang.org/grpc"
)

// raw passes messages through as bytes, so that no generated code is needed: the request is
// read and dropped, the reply is the encoded message given on the command line.
type raw struct{}

func (raw) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }

func (raw) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

func (raw) Name() string { return "proto" }

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: goecho HOST:PORT REPLY_HEX")
	}
	reply, err := hex.DecodeString(os.Args[2])
	if err != nil {
		log.Fatalf("reply: %v", err)
	}
	listener, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	answer := func(_ any, stream grpc.ServerStream) error {
		var request []byte
		if err := stream.RecvMsg(&request); err != nil {
			return err
		}
		out := reply
		return stream.SendMsg(&out)
	}
	server := grpc.NewServer(grpc.ForceServerCodec(raw{}), grpc.UnknownServiceHandler(answer))
	fmt.Println("serving")
	if err := server.Serve(listener); err != nil {
		log.Fatal(err)
	}
}
