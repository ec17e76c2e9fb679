// Package rpclimit bounds what one client can make a shortleaf gRPC server
// hold: message sizes (transport-wide and per method), streams per
// connection, idle and old connections, keepalive abuse, concurrent
// connections (in total and per caller: a source address or a uid), and the
// time a unary handler may run.
//
//	lim := rpclimit.Limits{MaxRecvMsgSize: 128 << 10, MaxConnections: 10_000, ...}
//	srv := grpc.NewServer(append(lim.ServerOptions(onRefuse), grpc.Creds(creds))...)
//	srv.Serve(lim.Listener(lis, rpclimit.ByRemoteIP, onRefuse))
//
// Every server of the project (the agent API, the admin socket and the
// Workload API) takes its options from here, so each limit is written once.
package rpclimit
