package control

import (
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/openappliance/appliance/appliance/api"
	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/appliance/tmsh"
)

// TestRoleOf: who the daemon takes a socket peer for.
func TestRoleOf(t *testing.T) {
	cfg := config.New("lb1")
	cfg.Shared.Users = []config.User{
		{Name: "alice", PartitionAccess: []config.PartitionAccess{{Partition: config.AllPartitions, Role: config.RoleGuest}}},
		{Name: "oscar", PartitionAccess: []config.PartitionAccess{{Partition: config.AllPartitions, Role: config.RoleOperator}}},
	}
	srv := NewServer(tmsh.New(&core{cfg: cfg}), nil, nil)
	// A uid that is neither root nor the test's own, so that the auth user objects decide.
	other := 64999
	if os.Geteuid() == other {
		other++
	}
	tests := []struct {
		name string
		peer peer
		want config.Role
	}{
		{"root", peer{uid: 0, user: "root"}, config.RoleAdmin},
		{"the daemon's own user", peer{uid: os.Geteuid(), user: "whoever"}, config.RoleAdmin},
		{"guest", peer{uid: other, user: "alice"}, config.RoleGuest},
		{"operator", peer{uid: other, user: "oscar"}, config.RoleOperator},
		{"built-in admin", peer{uid: other, user: "admin"}, config.RoleAdmin},
		{"no auth user", peer{uid: other, user: "mallory"}, config.RoleNoAccess},
		{"unknown peer", peer{uid: -1, user: "unknown"}, config.RoleNoAccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := srv.roleOf(tt.peer); got != tt.want {
				t.Fatalf("roleOf = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestExecRefused runs commands over a real socket as peers the server takes for other
// users: a refusal reaches the client as the error trailer and changes nothing.
func TestExecRefused(t *testing.T) {
	cfg := config.New("lb1")
	cfg.Shared.Users = []config.User{{Name: "alice", PartitionAccess: []config.PartitionAccess{{Partition: config.AllPartitions, Role: config.RoleGuest}}}}
	c := &core{cfg: cfg}
	srv := NewServer(tmsh.New(c), func() (string, string, string) { return "lb1", "Active", "Standalone" }, nil)
	var as atomic.Pointer[peer]
	srv.identify = func(net.Conn) peer { return *as.Load() }
	client := serveForTest(t, srv)
	exec := func(command string) string {
		t.Helper()
		_, tr := client.exec(api.ExecRequest{Command: command})
		return tr.Get(api.TrailerError)
	}
	tests := []struct {
		peer    peer
		command string
		want    string // the error trailer's start; "" for success
	}{
		{peer{uid: 64102, user: "alice"}, "list ltm pool", ""},
		{peer{uid: 64102, user: "alice"}, "create ltm pool p1", "01070822:3: Access Denied: User (alice) with role (guest) may not run (create ltm pool p1)"},
		{peer{uid: 64103, user: "mallory"}, "list ltm pool", "01070822:3: Access Denied: User (mallory) with role (no-access) may not run (list ltm pool)"},
		{peer{uid: 64103, user: "mallory"}, "help", ""},
		{peer{uid: 64101, user: "admin"}, "create ltm pool p2", ""},
	}
	for _, tt := range tests {
		as.Store(&tt.peer)
		got := exec(tt.command)
		if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: %q: error trailer %q, want %q", tt.peer.user, tt.command, got, tt.want)
		}
	}
	if _, i := c.cfg.Shared.FindPool("/Common/p1"); i >= 0 {
		t.Error("the refused create made pool p1")
	}

	// Completion answers a user with no access nothing: it would show object names.
	for _, tt := range []struct {
		peer peer
		want bool
	}{{peer{uid: 64102, user: "alice"}, true}, {peer{uid: 64103, user: "mallory"}, false}} {
		as.Store(&tt.peer)
		cr, err := client.complete(api.CompleteRequest{Line: "list ltm pool ", Pos: len("list ltm pool ")})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(cr.Candidates) > 0; got != tt.want {
			t.Errorf("%s: completion of \"list ltm pool \" gave %d candidates, want some: %v", tt.peer.user, len(cr.Candidates), tt.want)
		}
	}
	if _, i := c.cfg.Shared.FindPool("/Common/p2"); i < 0 {
		t.Error("admin's create did not make pool p2")
	}
}
