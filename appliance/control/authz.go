package control

import (
	"fmt"
	"os"
	"os/user"
	"strconv"

	"github.com/openappliance/appliance/appliance/config"
)

// roleOf decides what the caller may do. Root, and the daemon's own user (a daemon started
// by hand), may do everything; anyone else gets the role of their auth user object, or
// no-access (help and quit): a Unix account is not an administrator of the appliance until
// an admin makes it one, as on a BIG-IP.
func (s *Server) roleOf(p peer) config.Role {
	if p.uid == 0 || p.uid == os.Geteuid() {
		return config.RoleAdmin
	}
	if p.uid < 0 {
		return config.RoleNoAccess
	}
	if role, ok := s.interp.Role(p.user); ok {
		return role
	}
	return config.RoleNoAccess
}

// chgrp gives the socket to group; an empty group leaves the daemon's own.
func chgrp(path, group string) error {
	if group == "" {
		return nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return fmt.Errorf("control socket group: %w", err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return fmt.Errorf("control socket group %s: gid %q: %w", group, g.Gid, err)
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("control socket group %s: %w", group, err)
	}
	return nil
}
