// Simulated agents in Go, for bench/controlplane.py --fleet --sim go: the same agents and
// the same stdin/stdout commands as bench/cpsim.py, built on grpc-go so that the client
// side costs a small part of what Python's gRPC costs per message and does not dominate
// the measurement on a machine shared with the server and the gateways.
//
// The identities are the ones bench/cpsim.py enrolled (DIR/identities.json: id, key, cert);
// this program does not enrol. Per agent: its own connection with its own certificate
// (real mutual TLS), a policy stream (hello with the versions it holds, one APPLIED or
// REMOVED ack per message, no signature check, as cpsim.py), a heartbeat every
// --heartbeat seconds (jittered), and on command an event stream.
//
// Commands (stdin, one per line) and answers (stdout):
//
//	connect EP[,EP...]   agent i connects to EP[i % n]          -> "connecting N"
//	events K B           every agent sends K batches of B events -> "events-done SENT SECONDS P/H/E"
//	disconnect           close every connection                  -> "disconnected"
//	quit
//
// Built by bench/cpsim_go/build (Debian's golang and grpc-go packages, offline).
package main

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "moraysim/pb"
)

// protoCodec marshals with protobuf-go (API v2): Debian's grpc-go is built against the old
// golang/protobuf API, which cannot marshal the messages protoc-gen-go generates now.
type protoCodec struct{}

func (protoCodec) Marshal(v any) ([]byte, error)   { return proto.Marshal(v.(proto.Message)) }
func (protoCodec) Unmarshal(b []byte, v any) error { return proto.Unmarshal(b, v.(proto.Message)) }
func (protoCodec) Name() string                    { return "proto" }
func init()                                        { encoding.RegisterCodec(protoCodec{}) }

var payload = []byte(`{"type":"exec","process":{"pid":1234,"binary":"/usr/bin/true"}}`)

type identity struct {
	ID   string `json:"id"`
	Key  string `json:"key"`
	Cert string `json:"cert"`
}

type counters struct {
	policy, heartbeat, events atomic.Int64
	mu                        sync.Mutex
	codes                     map[string]int
	first                     map[string]float64
}

func (c *counters) failed(kind string, err error) {
	st, _ := status.FromError(err)
	key := kind + ":" + st.Code().String()
	c.mu.Lock()
	c.codes[key]++
	detail := key + ": " + st.Message()
	if len(detail) > 200 {
		detail = detail[:200]
	}
	if _, ok := c.first[detail]; !ok {
		c.first[detail] = float64(time.Now().UnixNano()) / 1e9
	}
	c.mu.Unlock()
}

type agent struct {
	id        string
	creds     credentials.TransportCredentials
	conn      *grpc.ClientConn
	cancel    context.CancelFunc
	mu        sync.Mutex
	versions  map[string]uint64
	heartbeat time.Duration
	errs      *counters
}

func (a *agent) snapshot() map[string]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]uint64, len(a.versions))
	for k, v := range a.versions {
		out[k] = v
	}
	return out
}

func (a *agent) connect(endpoint string) error {
	conn, err := grpc.Dial(endpoint,
		grpc.WithTransportCredentials(a.creds),
		// 8 KiB buffers (grpc-go's default: 32 KiB each way): thousands of connections in
		// one process, each message a few hundred bytes
		grpc.WithReadBufferSize(8<<10), grpc.WithWriteBufferSize(8<<10),
		// the agent's channel options (agent/controlplane/client.py CHANNEL_OPTIONS), with
		// 20 s for a ping's answer as cpsim.py
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: 10 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2,
			MaxDelay: 2 * time.Second}}))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.conn, a.cancel = conn, cancel
	stub := pb.NewAgentServiceClient(conn)
	go a.policies(ctx, stub)
	go a.heartbeats(ctx, stub)
	return nil
}

func (a *agent) policies(ctx context.Context, stub pb.AgentServiceClient) {
	for ctx.Err() == nil {
		err := a.policyStream(ctx, stub)
		if ctx.Err() != nil {
			return
		}
		a.errs.policy.Add(1)
		a.errs.failed("policy", err)
		sleep(ctx, time.Second+time.Duration(rand.Int63n(int64(time.Second))))
	}
}

func (a *agent) policyStream(ctx context.Context, stub pb.AgentServiceClient) error {
	call, err := stub.PolicyStream(ctx)
	if err != nil {
		return err
	}
	hello := &pb.PolicyStreamRequest{Msg: &pb.PolicyStreamRequest_Hello{
		Hello: &pb.PolicyHello{Versions: a.snapshot()}}}
	if err := call.Send(hello); err != nil {
		return err
	}
	for {
		msg, err := call.Recv()
		if err != nil {
			return err
		}
		var p pb.PolicyPayload
		if err := proto.Unmarshal(msg.GetPolicy().GetPayload(), &p); err != nil {
			return err
		}
		st := pb.ApplyStatus_APPLIED
		a.mu.Lock()
		if p.Removed {
			delete(a.versions, p.Name)
			st = pb.ApplyStatus_REMOVED
		} else {
			a.versions[p.Name] = p.Version
		}
		a.mu.Unlock()
		ack := &pb.PolicyStreamRequest{Msg: &pb.PolicyStreamRequest_Ack{
			Ack: &pb.PolicyAck{Name: p.Name, Version: p.Version, Status: st}}}
		if err := call.Send(ack); err != nil {
			return err
		}
	}
}

func (a *agent) heartbeats(ctx context.Context, stub pb.AgentServiceClient) {
	sleep(ctx, time.Duration(rand.Float64()*float64(a.heartbeat)))
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := stub.Heartbeat(cctx, &pb.HeartbeatRequest{Status: &pb.AgentStatus{
			Kernel: "6.1.0-sim", AgentVersion: "sim", PolicyVersions: a.snapshot()}})
		cancel()
		if err != nil && ctx.Err() == nil {
			a.errs.heartbeat.Add(1)
			a.errs.failed("heartbeat", err)
		}
		sleep(ctx, time.Duration(float64(a.heartbeat)*(0.9+0.2*rand.Float64())))
	}
}

// events sends batches one at a time, each acked; a broken stream is opened again and the
// unacked batch resent (same ids: stored once).
func (a *agent) events(batches, size int) (int, error) {
	stub := pb.NewAgentServiceClient(a.conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() pb.AgentService_EventsClient {
		call, err := stub.Events(ctx)
		if err != nil {
			return nil
		}
		return call
	}
	call := open()
	sent := 0
	for b := 0; b < batches; b++ {
		now := time.Now().UnixMilli()
		events := make([]*pb.Event, size)
		for i := range events {
			id := make([]byte, 16)
			crand.Read(id)
			events[i] = &pb.Event{Id: hex.EncodeToString(id), TimeMs: now, Type: "exec",
				PayloadJson: payload}
		}
		batch := &pb.EventBatch{BatchId: uint64(b + 1), Events: events}
		ok := false
		for attempt := 0; attempt < 20 && !ok; attempt++ {
			if call != nil && call.Send(batch) == nil {
				if ack, err := call.Recv(); err == nil && ack.BatchId == uint64(b+1) {
					ok = true
					break
				}
			}
			a.errs.events.Add(1)
			time.Sleep(500*time.Millisecond + time.Duration(rand.Int63n(int64(time.Second))))
			call = open()
		}
		if !ok {
			return sent, fmt.Errorf("%s: event stream keeps breaking", a.id)
		}
		sent += size
	}
	if call != nil {
		call.CloseSend()
		call.Recv() // the server ends the call after our half-close
	}
	return sent, nil
}

func (a *agent) disconnect() {
	if a.cancel != nil {
		a.cancel()
	}
	if a.conn != nil {
		a.conn.Close()
	}
	a.conn, a.cancel = nil, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func main() {
	dir := flag.String("dir", "", "directory with identities.json (from cpsim.py)")
	caFile := flag.String("ca", "", "the server CA (PEM)")
	heartbeat := flag.Float64("heartbeat", 60, "seconds between heartbeats")
	pace := flag.Duration("pace", 2500*time.Microsecond, "time between two agents' connects")
	flag.Parse()
	// a heap of a few hundred MB that lives as long as the process (connections, their
	// buffers): collect at 4x (Go's default: 2x), the harness's CPU is not the measurement
	debug.SetGCPercent(300)
	raw, err := os.ReadFile(filepath.Join(*dir, "identities.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpsim-go:", err)
		os.Exit(2)
	}
	var idents []identity
	if err := json.Unmarshal(raw, &idents); err != nil {
		fmt.Fprintln(os.Stderr, "cpsim-go: identities.json:", err)
		os.Exit(2)
	}
	caPem, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpsim-go:", err)
		os.Exit(2)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPem)
	errs := &counters{codes: map[string]int{}, first: map[string]float64{}}
	agents := make([]*agent, 0, len(idents))
	for _, id := range idents {
		pair, err := tls.X509KeyPair([]byte(id.Cert), []byte(id.Key))
		if err != nil {
			fmt.Fprintln(os.Stderr, "cpsim-go: identity", id.ID, err)
			os.Exit(2)
		}
		creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair},
			RootCAs: pool, MinVersion: tls.VersionTLS12})
		agents = append(agents, &agent{id: id.ID, creds: creds, versions: map[string]uint64{},
			heartbeat: time.Duration(*heartbeat * float64(time.Second)), errs: errs})
	}
	fmt.Printf("enrolled %d\n", len(agents))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		line := strings.Fields(in.Text())
		if len(line) == 0 {
			break
		}
		switch line[0] {
		case "connect":
			endpoints := strings.Split(line[1], ",")
			for n, a := range agents {
				if err := a.connect(endpoints[n%len(endpoints)]); err != nil {
					fmt.Fprintln(os.Stderr, "cpsim-go: connect:", err)
					os.Exit(1)
				}
				// paced as agents coming up (and as cpsim.py's one loop connects): 400/s
				// per process; all at once, the TLS handshakes of thousands of new
				// connections time out and the bench measures a reconnect storm
				time.Sleep(*pace)
			}
			fmt.Printf("connecting %d\n", len(agents))
		case "events":
			k, _ := strconv.Atoi(line[1])
			b, _ := strconv.Atoi(line[2])
			start := time.Now()
			var total atomic.Int64
			var wg sync.WaitGroup
			for _, a := range agents {
				wg.Add(1)
				go func(a *agent) {
					defer wg.Done()
					n, err := a.events(k, b)
					if err != nil {
						fmt.Fprintln(os.Stderr, "cpsim-go:", err)
					}
					total.Add(int64(n))
				}(a)
			}
			wg.Wait()
			errs.mu.Lock()
			report, _ := json.MarshalIndent(map[string]any{"codes": errs.codes,
				"first_seen": errs.first}, "", " ")
			errs.mu.Unlock()
			os.WriteFile(filepath.Join(*dir, "errors.json"), report, 0o644)
			fmt.Printf("events-done %d %.3f %d/%d/%d\n", total.Load(),
				time.Since(start).Seconds(), errs.policy.Load(), errs.heartbeat.Load(),
				errs.events.Load())
		case "disconnect":
			for _, a := range agents {
				a.disconnect()
			}
			fmt.Println("disconnected")
		case "quit":
			return
		}
	}
}
