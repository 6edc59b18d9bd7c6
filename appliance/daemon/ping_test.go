package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// TestPing: run util ping runs the real ping from the daemon's namespace: an address there
// answers, one it has no route to fails the command.
func TestPing(t *testing.T) {
	ns := newTestNS(t, "ping")
	ns.run(t, "ip", "link", "set", "lo", "up")
	d := &Daemon{logger: slog.New(slog.DiscardHandler)}
	ns.do(t, func() error {
		var out bytes.Buffer
		if err := d.Ping(context.Background(), netip.MustParseAddr("127.0.0.1"), 2, &out); err != nil {
			t.Errorf("ping 127.0.0.1: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), "2 packets transmitted, 2 received") {
			t.Errorf("ping 127.0.0.1 printed:\n%s", out.String())
		}
		out.Reset()
		if err := d.Ping(context.Background(), netip.MustParseAddr("192.0.2.1"), 1, &out); err == nil {
			t.Errorf("ping of an unroutable address succeeded:\n%s", out.String())
		}
		return nil
	})
}
