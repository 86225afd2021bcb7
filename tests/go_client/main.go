// A Go client of the sidecar, built from proto/ with protoc-gen-go and protoc-gen-go-grpc:
// tests/test_go_client.py builds it and ranks two documents through a real sidecar.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	pb "github.com/reranker-nvidia/reranker-nvidia/gen/go/reranker_nvidia/v1"
	"google.golang.org/grpc"
)

func main() {
	conn, err := grpc.Dial(os.Args[1], grpc.WithInsecure())
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := pb.NewRerankerServiceClient(conn)
	answer, err := client.Rank(ctx, &pb.RankRequest{Query: "which way", Documents: []string{"this way", "bananas"}})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for _, result := range answer.Results {
		fmt.Printf("%d %.4f\n", result.Index, result.Score)
	}
}
