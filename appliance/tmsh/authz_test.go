package tmsh

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/openappliance/appliance/appliance/config"
)

// TestAuthorize runs each command as each role: a refused command fails with ErrDenied,
// names the user, the role and the command, and changes nothing.
func TestAuthorize(t *testing.T) {
	const (
		admin    = config.RoleAdmin
		operator = config.RoleOperator
		guest    = config.RoleGuest
		none     = config.RoleNoAccess
	)
	tests := []struct {
		cmd     string
		allowed []config.Role
	}{
		{"list ltm pool /RPC/*", []config.Role{admin, operator, guest}},
		{"list", []config.Role{admin, operator, guest}},
		{"show sys failover", []config.Role{admin, operator, guest}},
		{"show sys connection type mirror", []config.Role{admin, operator, guest}},
		{"cd /RPC", []config.Role{admin, operator, guest}},
		{"help", []config.Role{admin, operator, guest, none}},
		{"quit", []config.Role{admin, operator, guest, none}},
		{"exit", []config.Role{admin, operator, guest, none}},
		{"run sys failover standby", []config.Role{admin, operator}},
		{"run cm config-sync to-group dg1", []config.Role{admin}},
		{"modify ltm pool /RPC/RPC_POOL_GALERA description changed", []config.Role{admin}},
		{"create ltm pool /RPC/p2", []config.Role{admin}},
		{"delete ltm virtual /RPC/RPC_VS_GALERA", []config.Role{admin}},
		{"create auth user mallory partition-access add { all-partitions { role admin } }", []config.Role{admin}},
		{"modify auth user alice partition-access modify { all-partitions { role admin } }", []config.Role{admin}},
		{"modify sys db failover.nettimeout value 2", []config.Role{admin}},
		{"save sys config", []config.Role{admin}},
		{"load sys config", []config.Role{admin}},
		{"frobnicate ltm pool", []config.Role{admin}}, // deny by default: an unclassified verb is admin-only
	}
	for _, tt := range tests {
		for _, role := range []config.Role{admin, operator, guest, none, "manager"} {
			t.Run(string(role)+"/"+tt.cmd, func(t *testing.T) {
				in, core := newTestInterpreter(t)
				if err := in.Exec(context.Background(), &Session{}, "create auth user alice partition-access add { all-partitions { role guest } }", &bytes.Buffer{}); err != nil {
					t.Fatal(err)
				}
				before := core.cfg.Clone()
				err := in.Exec(context.Background(), &Session{User: "alice", Role: role}, tt.cmd, &bytes.Buffer{})
				denied := errors.Is(err, config.ErrDenied)
				// A role this code does not know gets what no-access gets.
				want := !contains(tt.allowed, role) && !(role == "manager" && contains(tt.allowed, none))
				if denied != want {
					t.Fatalf("denied = %v (err %v), want %v", denied, err, want)
				}
				if !denied {
					return
				}
				for _, part := range []string{"01070822:3", "User (alice)", "role (" + string(role) + ")", "(" + tt.cmd + ")"} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("error %q lacks %q", err, part)
					}
				}
				if !reflect.DeepEqual(before, core.cfg) {
					t.Error("a refused command changed the configuration")
				}
			})
		}
	}
}

// TestAuthorizeAfterCd: the module implied by cd counts, so cd sys; run failover standby is
// the failover it is.
func TestAuthorizeAfterCd(t *testing.T) {
	in, _ := newTestInterpreter(t)
	s := &Session{User: "oscar", Role: config.RoleOperator}
	err := in.Exec(context.Background(), s, "cd sys; run failover standby", &bytes.Buffer{})
	if errors.Is(err, config.ErrDenied) {
		t.Fatalf("operator refused run sys failover after cd sys: %v", err)
	}
	s = &Session{User: "gina", Role: config.RoleGuest}
	if err := in.Exec(context.Background(), s, "cd sys; run failover standby", &bytes.Buffer{}); !errors.Is(err, config.ErrDenied) {
		t.Fatalf("guest ran run sys failover after cd sys: %v", err)
	}
}

// TestAuthUser creates, lists, modifies and deletes an auth user in BIG-IP's syntax.
func TestAuthUser(t *testing.T) {
	in, core := newTestInterpreter(t)
	run := func(cmd string) (string, error) {
		var out bytes.Buffer
		err := in.Exec(context.Background(), &Session{}, cmd, &out)
		return out.String(), err
	}
	if _, err := run(`create auth user alice description "on call" partition-access add { all-partitions { role operator } }`); err != nil {
		t.Fatal(err)
	}
	out, err := run("list auth user alice")
	if err != nil {
		t.Fatal(err)
	}
	want := `auth user alice {
    description "on call"
    partition-access {
        all-partitions {
            role operator
        }
    }
}
`
	if out != want {
		t.Errorf("list auth user alice:\n%s\nwant:\n%s", out, want)
	}
	if _, err := run("modify auth user alice partition-access modify { all-partitions { role guest } }"); err != nil {
		t.Fatal(err)
	}
	if role, _ := core.cfg.Role("alice"); role != config.RoleGuest {
		t.Errorf("role after modify = %q, want guest", role)
	}
	if role, ok := in.Role("alice"); role != config.RoleGuest || !ok {
		t.Errorf("Interpreter.Role(alice) = %q, %v", role, ok)
	}
	for _, bad := range []string{
		"create auth user bob",
		"create auth user bob partition-access add { all-partitions { role manager } }",
		"create auth user bob partition-access add { all-partitions { role none } }",
		"create auth user bob partition-access add { RPC { role guest } }",
		"create auth user bob partition-access add { all-partitions }",
		"create auth user bob partition-access add { all-partitions { shell tmsh } }",
		"create auth user alice partition-access add { all-partitions { role guest } }",
		"create auth user 'b b' partition-access add { all-partitions { role guest } }",
	} {
		if _, err := run(bad); err == nil {
			t.Errorf("%s: succeeded, want an error", bad)
		}
	}
	if _, err := run("delete auth user alice"); err != nil {
		t.Fatal(err)
	}
	if _, ok := core.cfg.Role("alice"); ok {
		t.Error("alice still has a role after delete")
	}
}

// FuzzGuestChangesNothing: whatever a guest types, the configuration stays as it was.
func FuzzGuestChangesNothing(f *testing.F) {
	f.Add("modify ltm pool /RPC/RPC_POOL_GALERA description x")
	f.Add("cd ltm; delete pool /RPC/RPC_POOL_GALERA")
	f.Add("list; create auth user g partition-access add { all-partitions { role admin } }")
	f.Add("run sys failover standby")
	f.Fuzz(func(t *testing.T, line string) {
		core := &fakeCore{cfg: config.New("lb1")}
		in := New(core)
		if err := in.Exec(context.Background(), &Session{}, setup, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		before := core.cfg.Clone()
		_ = in.Exec(context.Background(), &Session{User: "g", Role: config.RoleGuest}, line, &bytes.Buffer{})
		if !reflect.DeepEqual(before, core.cfg) {
			t.Fatalf("guest line %q changed the configuration", line)
		}
	})
}

func contains(roles []config.Role, r config.Role) bool {
	for _, x := range roles {
		if x == r {
			return true
		}
	}
	return false
}

// FuzzAuthUser feeds arbitrary partition-access and description values to create and
// modify auth user: no panic, and a failing command changes nothing.
func FuzzAuthUser(f *testing.F) {
	f.Add("add { all-partitions { role operator } }")
	f.Add("modify { all-partitions { role guest } }")
	f.Add("replace-all-with { all-partitions { role admin } RPC { role guest } }")
	f.Add("{ all-partitions { role } }")
	f.Fuzz(func(t *testing.T, access string) {
		core := &fakeCore{cfg: config.New("lb1")}
		in := New(core)
		if err := in.Exec(context.Background(), &Session{}, "create auth user bob partition-access add { all-partitions { role guest } }", &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"create auth user alice partition-access " + access, "modify auth user bob partition-access " + access} {
			if strings.ContainsAny(access, ";\n") {
				return // a second command may legitimately change things
			}
			before := core.cfg.Clone()
			if err := in.Exec(context.Background(), &Session{}, cmd, &bytes.Buffer{}); err != nil && !reflect.DeepEqual(before, core.cfg) {
				t.Fatalf("failed %q changed the configuration", cmd)
			}
			if err := core.cfg.Validate(); err != nil {
				t.Fatalf("%q left an invalid configuration: %v", cmd, err)
			}
		}
	})
}
