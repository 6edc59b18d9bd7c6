package configsync

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

type recorder struct {
	mu   sync.Mutex
	got  []string
	fail bool
}

func (r *recorder) ApplyShared(_ context.Context, data []byte, from string) error {
	if r.fail {
		return errors.New("01020036:3: The requested pool (/Common/x) was not found.")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, from+":"+string(data))
	return nil
}

func freeAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func TestPush(t *testing.T) {
	for _, tt := range []struct {
		name    string
		fail    bool
		wantErr string
	}{
		{"applied", false, ""},
		{"refused", true, "was not found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := freeAddr(t)
			rec := &recorder{fail: tt.fail}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); NewServer([]netip.AddrPort{addr}, rec, nil).Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			var err error
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if err = Push(context.Background(), addr, "lb1", []byte("x = 1")); err == nil || !strings.Contains(err.Error(), "connection refused") {
					break
				}
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(rec.got) != 1 || rec.got[0] != "lb1:x = 1" {
					t.Errorf("applied %q", rec.got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Push = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
