// Package grpcx builds the gRPC servers and client connections every
// hostscale binary uses, so that all of them share one set of limits,
// keepalive rules, interceptors (structured logging, panic recovery,
// metrics), the grpc.health.v1 service and server reflection.
//
// It owns transport policy only; it never registers a component's services.
package grpcx
