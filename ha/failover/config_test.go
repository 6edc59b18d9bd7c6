package failover

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		timeout, wantTimeout, wantInterval time.Duration
	}{
		{0, 500 * time.Millisecond, 50 * time.Millisecond},
		{3 * time.Second, 3 * time.Second, 200 * time.Millisecond},
		{time.Second, time.Second, 100 * time.Millisecond},
		{300 * time.Millisecond, 300 * time.Millisecond, 30 * time.Millisecond},
		{200 * time.Millisecond, 200 * time.Millisecond, 20 * time.Millisecond},
		{20 * time.Millisecond, 20 * time.Millisecond, 5 * time.Millisecond},
	}
	for _, tt := range tests {
		c := Config{Timeout: tt.timeout}.withDefaults()
		if c.Timeout != tt.wantTimeout || c.Interval != tt.wantInterval {
			t.Errorf("timeout %s: defaulted to timeout %s interval %s, want %s %s", tt.timeout, c.Timeout, c.Interval, tt.wantTimeout, tt.wantInterval)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ap := netip.MustParseAddrPort
	good := Config{Device: "lb1", Listen: []netip.AddrPort{ap("10.0.0.1:1026")}, Peers: []netip.AddrPort{ap("10.0.0.2:1026")}}
	if err := good.withDefaults().validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	if err := (Config{Device: "lb1"}).withDefaults().validate(); err != nil {
		t.Fatalf("standalone config (no listen address): %v", err)
	}
	mapped := good
	mapped.Peers = []netip.AddrPort{ap("[::ffff:10.0.0.1]:1026")} // our own address, mapped
	bad := map[string]Config{
		"no device":          {Listen: good.Listen},
		"device with space":  {Device: "lb 1", Listen: good.Listen},
		"listen port 0":      {Device: "lb1", Listen: []netip.AddrPort{ap("10.0.0.1:0")}},
		"listen unspecified": {Device: "lb1", Listen: []netip.AddrPort{ap("0.0.0.0:1026")}},
		"listen twice":       {Device: "lb1", Listen: []netip.AddrPort{ap("10.0.0.1:1026"), ap("10.0.0.1:1026")}},
		"peer invalid":       {Device: "lb1", Listen: good.Listen, Peers: []netip.AddrPort{{}}},
		"peer is us":         mapped,
		"negative timeout":   {Device: "lb1", Listen: good.Listen, Timeout: -time.Second},
		"interval too long":  {Device: "lb1", Listen: good.Listen, Timeout: time.Second, Interval: time.Second},
	}
	for name, c := range bad {
		if err := c.withDefaults().validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: validate = %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestParseNetTimeout(t *testing.T) {
	good := map[string]time.Duration{
		"3":     3 * time.Second,
		"0.2":   200 * time.Millisecond,
		"1.5":   1500 * time.Millisecond,
		"0.001": time.Millisecond,
		"3600":  time.Hour,
		"03":    3 * time.Second,
	}
	for s, want := range good {
		if got, err := ParseNetTimeout(s); err != nil || got != want {
			t.Errorf("ParseNetTimeout(%q) = %s, %v; want %s", s, got, err, want)
		}
	}
	for _, s := range []string{"", ".", "0", "0.0", "-1", "+1", "1e3", "1m", "3s", " 3", "3.", ".5", "1.2.3", "3601", "99999999999999999999"} {
		if got, err := ParseNetTimeout(s); err == nil {
			t.Errorf("ParseNetTimeout(%q) = %s, want an error", s, got)
		}
	}
}
