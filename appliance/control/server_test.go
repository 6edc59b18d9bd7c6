package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openappliance/appliance/appliance/api"
	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/appliance/tmsh"
)

type core struct{ cfg config.Config }

func (c *core) Config() config.Config { return c.cfg.Clone() }
func (c *core) Update(_ context.Context, fn func(*config.Config) error) error {
	n := c.cfg.Clone()
	if err := fn(&n); err != nil {
		return err
	}
	if err := n.Validate(); err != nil {
		return err
	}
	c.cfg = n
	return nil
}
func (c *core) Save(context.Context) error { return nil }
func (c *core) Load(context.Context) error { return nil }
func (c *core) Connections(context.Context, tmsh.ConnFilter, func(tmsh.Connection) error) error {
	return nil
}
func (c *core) DeleteConnections(context.Context, tmsh.ConnFilter) (int, error) { return 0, nil }
func (c *core) Failover() tmsh.FailoverStatus                                   { return tmsh.FailoverStatus{} }
func (c *core) ForceStandby(context.Context) error                              { return nil }
func (c *core) ConfigSync(context.Context, string) error                        { return nil }
func (c *core) Ping(context.Context, netip.Addr, int, io.Writer) error          { return nil }

// testClient talks to a Server over a real unix socket, served until the test ends. Each
// request has a connection of its own, so that a test may change the peer in between.
type testClient struct {
	t  *testing.T
	hc *http.Client
}

func serveForTest(t *testing.T, srv *Server) *testClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "c.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return &testClient{t: t, hc: &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}}
}

// post sends req as JSON to path, retrying for 5 s while the server is starting.
func (c *testClient) post(path string, req any) *http.Response {
	c.t.Helper()
	body, _ := json.Marshal(req)
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err = c.hc.Post("http://x"+path, "application/json", bytes.NewReader(body)); err == nil {
			return resp
		}
	}
	c.t.Fatal(err)
	return nil
}

// exec runs a command and returns its output and trailers.
func (c *testClient) exec(req api.ExecRequest) (string, http.Header) {
	c.t.Helper()
	resp := c.post(api.PathExec, req)
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return string(out), resp.Trailer
}

// complete asks what may come next.
func (c *testClient) complete(req api.CompleteRequest) (api.CompleteResponse, error) {
	c.t.Helper()
	resp := c.post(api.PathComplete, req)
	defer resp.Body.Close()
	var comp api.CompleteResponse
	err := json.NewDecoder(resp.Body).Decode(&comp)
	return comp, err
}

// TestExec runs commands over a real unix socket and checks output, trailers and status.
func TestExec(t *testing.T) {
	srv := NewServer(tmsh.New(&core{cfg: config.New("lb1")}), func() (string, string, string) { return "lb1", "Active", "Standalone" }, nil)
	c := serveForTest(t, srv)
	exec := c.exec
	out, tr := exec(api.ExecRequest{Command: "create auth partition RPC; cd /RPC; create ltm pool p1; list ltm pool one-line"})
	if tr.Get(api.TrailerError) != "" || tr.Get(api.TrailerPartition) != "RPC" {
		t.Errorf("trailers %v", tr)
	}
	if !strings.Contains(out, "ltm pool /RPC/p1 {") {
		t.Errorf("output %q", out)
	}
	_, tr = exec(api.ExecRequest{Command: "list ltm pool nope", Partition: "RPC"})
	if got := tr.Get(api.TrailerError); got != "01020036:3: The requested pool (/RPC/nope) was not found." {
		t.Errorf("error trailer %q", got)
	}
	comp, err := c.complete(api.CompleteRequest{Line: "list ltm po", Pos: len("list ltm po"), Partition: "RPC"})
	if err != nil || comp.Start != len("list ltm ") || len(comp.Candidates) != 1 || comp.Candidates[0].Word != "pool" || comp.Candidates[0].Help == "" {
		t.Errorf("complete: %+v, %v", comp, err)
	}
	comp, err = c.complete(api.CompleteRequest{Line: "modify ltm pool ", Pos: 16, Partition: "RPC"})
	if err != nil || len(comp.Candidates) != 1 || comp.Candidates[0].Word != "p1" {
		t.Errorf("complete names: %+v, %v", comp, err)
	}
	_, tr = exec(api.ExecRequest{Command: "quit"})
	if tr.Get(api.TrailerQuit) != "1" {
		t.Errorf("quit trailer %v", tr)
	}
}
