package control

import (
	"errors"
	"os"
	"testing"

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
		want config.Role // "" with an ErrDenied error
	}{
		{"root", peer{uid: 0, user: "root"}, config.RoleAdmin},
		{"the daemon's own user", peer{uid: os.Geteuid(), user: "whoever"}, config.RoleAdmin},
		{"guest", peer{uid: other, user: "alice"}, config.RoleGuest},
		{"operator", peer{uid: other, user: "oscar"}, config.RoleOperator},
		{"built-in admin", peer{uid: other, user: "admin"}, config.RoleAdmin},
		{"no auth user", peer{uid: other, user: "mallory"}, ""},
		{"unknown peer", peer{uid: -1, user: "unknown"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := srv.roleOf(tt.peer)
			if tt.want == "" {
				if !errors.Is(err, config.ErrDenied) {
					t.Fatalf("roleOf = %q, %v; want ErrDenied", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("roleOf = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
