package control

import (
	"fmt"
	"os"
	"os/user"
	"strconv"

	"github.com/openappliance/appliance/appliance/config"
)

// roleOf decides what the caller may do. Root, and the daemon's own user (a daemon started
// by hand), may do everything; anyone else gets the role of their auth user object, or is
// refused: a Unix account is not an administrator of the appliance until an admin says so.
func (s *Server) roleOf(p peer) (config.Role, error) {
	if p.uid == 0 || p.uid == os.Geteuid() {
		return config.RoleAdmin, nil
	}
	if p.uid < 0 {
		return "", config.NoRole(p.user)
	}
	if role, ok := s.interp.Role(p.user); ok {
		return role, nil
	}
	return "", config.NoRole(p.user)
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
