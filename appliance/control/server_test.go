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

// TestExec runs commands over a real unix socket and checks output, trailers and status.
func TestExec(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "c.sock")
	srv := NewServer(tmsh.New(&core{cfg: config.New("lb1")}), func() (string, string, string) { return "lb1", "Active", "Standalone" }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	exec := func(req api.ExecRequest) (string, http.Header) {
		t.Helper()
		body, _ := json.Marshal(req)
		var resp *http.Response
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if resp, err = hc.Post("http://x"+api.PathExec, "application/json", bytes.NewReader(body)); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return string(out), resp.Trailer
	}
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
	body, _ := json.Marshal(api.CompleteRequest{Line: "list ltm po", Pos: len("list ltm po"), Partition: "RPC"})
	resp, err := hc.Post("http://x"+api.PathComplete, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var comp api.CompleteResponse
	err = json.NewDecoder(resp.Body).Decode(&comp)
	resp.Body.Close()
	if err != nil || comp.Start != len("list ltm ") || len(comp.Candidates) != 1 || comp.Candidates[0].Word != "pool" || comp.Candidates[0].Help == "" {
		t.Errorf("complete: %+v, %v", comp, err)
	}
	body, _ = json.Marshal(api.CompleteRequest{Line: "modify ltm pool ", Pos: 16, Partition: "RPC"})
	resp, err = hc.Post("http://x"+api.PathComplete, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&comp)
	resp.Body.Close()
	if err != nil || len(comp.Candidates) != 1 || comp.Candidates[0].Word != "p1" {
		t.Errorf("complete names: %+v, %v", comp, err)
	}
	_, tr = exec(api.ExecRequest{Command: "quit"})
	if tr.Get(api.TrailerQuit) != "1" {
		t.Errorf("quit trailer %v", tr)
	}
}
