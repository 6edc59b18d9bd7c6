package config

import "slices"

// Role is what an auth user may do, named as BIG-IP names its roles.
type Role string

// The roles the appliance knows. BIG-IP has more (manager, auditor, ...); these cover who
// runs an HA pair: the people who change it, those who fail it over, those who look, and
// the accounts that may log in but do nothing.
const (
	RoleAdmin    Role = "admin"     // everything
	RoleOperator Role = "operator"  // list and show, plus run sys failover
	RoleGuest    Role = "guest"     // list and show only
	RoleNoAccess Role = "no-access" // help and quit only: any Unix account without an auth user
)

// Roles lists the roles an auth user may be given.
var Roles = []string{string(RoleAdmin), string(RoleOperator), string(RoleGuest), string(RoleNoAccess)}

// AllPartitions is BIG-IP's partition-access entry that applies to every partition.
const AllPartitions = "all-partitions"

// BuiltinAdmin is the account the appliance is administered with, as on a BIG-IP: it has
// role admin unless an auth user object of that name says otherwise.
const BuiltinAdmin = "admin"

// User is an auth user: a login (a Unix account whose shell is tmsh) and the role it has.
// Users are shared: config sync carries them to the peer, as BIG-IP syncs its accounts.
type User struct {
	Name            string            `toml:"name"`
	Description     string            `toml:"description,omitempty"`
	PartitionAccess []PartitionAccess `toml:"partition-access,omitempty"`
}

// PartitionAccess gives a user a role in a partition. Only all-partitions is supported:
// per-partition roles would need every command's partition worked out before it runs.
type PartitionAccess struct {
	Partition string `toml:"partition"` // all-partitions
	Role      Role   `toml:"role"`
}

// FindUser returns the auth user called name.
func (s *Shared) FindUser(name string) (*User, int) {
	for i := range s.Users {
		if s.Users[i].Name == name {
			return &s.Users[i], i
		}
	}
	return nil, -1
}

// Role returns the role of user, and false when the user has none: no auth user object
// (other than the built-in admin) or no partition access. Callers treat that as
// RoleNoAccess: a Unix account is not an administrator until an admin makes it one.
func (c *Config) Role(user string) (Role, bool) {
	u, i := c.Shared.FindUser(user)
	if i < 0 {
		if user == BuiltinAdmin {
			return RoleAdmin, true
		}
		return "", false
	}
	for _, a := range u.PartitionAccess {
		if a.Partition == AllPartitions {
			return a.Role, true
		}
	}
	return "", false
}

func validateUsers(users []User) error {
	seen := map[string]bool{}
	for _, u := range users {
		if seen[u.Name] {
			return Exists("user", u.Name, CommonPartition)
		}
		seen[u.Name] = true
		if !validUserName(u.Name) {
			return Invalid("auth user %q is not a valid name: a user name is a Unix login name (letters, digits, '_', '-', '.', not starting with '-')", u.Name)
		}
		if len(u.PartitionAccess) == 0 {
			return Invalid("auth user %s: partition-access is required, such as partition-access add { all-partitions { role guest } }", u.Name)
		}
		for _, a := range u.PartitionAccess {
			if a.Partition != AllPartitions {
				return Invalid("auth user %s: partition-access %s: only all-partitions is supported (a role for all partitions)", u.Name, a.Partition)
			}
			if !slices.Contains(Roles, string(a.Role)) {
				return Invalid("auth user %s: role %q must be one of %v", u.Name, a.Role, Roles)
			}
		}
		if len(u.PartitionAccess) > 1 {
			return Invalid("auth user %s: partition-access all-partitions is given %d times", u.Name, len(u.PartitionAccess))
		}
	}
	return nil
}

// validUserName accepts the portable Unix login names (POSIX's portable filename
// characters, as useradd does), since a user logs in with its Unix account.
func validUserName(name string) bool {
	if name == "" || len(name) > 32 || name[0] == '-' {
		return false
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.':
		default:
			return false
		}
	}
	return true
}
