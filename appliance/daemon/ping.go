package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strconv"
)

// Ping runs the system's ping (iputils) from the daemon's own network namespace, so that
// what it reaches is what the device reaches, and streams its output to w.
func (d *Daemon) Ping(ctx context.Context, host netip.Addr, count int, w io.Writer) error {
	path, err := exec.LookPath("ping")
	if err != nil {
		return fmt.Errorf("run util ping: %w (install iputils-ping)", err)
	}
	// -n: no name lookups; -W 2: a reply later than 2 s counts as lost.
	cmd := exec.CommandContext(ctx, path, "-n", "-W", "2", "-c", strconv.Itoa(count), host.String())
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return fmt.Errorf("run util ping: no reply from %s", host)
	default:
		return fmt.Errorf("run util ping %s: %w", host, err)
	}
}
