// Package daemon is applianced's core: it holds the running configuration, applies every
// change through one path (validate, save, reconcile the kernel), and runs the HA pair:
// heartbeats and failover, connection mirroring and config sync.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/ha/configsync"
	"github.com/openappliance/appliance/ha/failover"
	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/openappliance/appliance/kernel/link"
	"github.com/openappliance/appliance/kernel/nft"
)

// TableName is the one nftables table the appliance owns.
const TableName = "appliance"

// Options configure a daemon.
type Options struct {
	Name       string // device name
	ConfigPath string // the device-local config file; the shared part is ConfigPath.d/
	Logger     *slog.Logger
	// EventBuffer is the conntrack event socket's receive buffer in bytes (0: the default,
	// large enough for bursts; tests make it tiny to provoke overruns).
	EventBuffer int
	// EventLinger is how long the active's event reader waits, once it has read its socket
	// empty, before reading again while events come fast (over 2000 a second; 0: 1 ms;
	// negative: never). Events are then read, mirrored and written in batches, not one
	// thread wake-up each.
	EventLinger time.Duration
	// DigestInterval is how often the active sends a digest of its table for the standby to
	// check (0: 10 s; negative: never).
	DigestInterval time.Duration
	// NoTickle leaves the TCP connections a takeover inherits to their own retransmission
	// timers (see Daemon.tickle).
	NoTickle bool
	// PacerProcess is the executable that runs the heartbeat pacer process
	// (failover.Config.PacerProcess); empty: the pacer is a thread of the daemon.
	PacerProcess string
}

// Daemon is the appliance's core. Its exported methods are safe for concurrent use; all
// changes are serialised by mu, so there is one order of events.
type Daemon struct {
	opts   Options
	logger *slog.Logger
	store  config.Store

	running atomic.Pointer[config.Config]
	digest  atomic.Pointer[sharedDigest] // of the running configuration's shared part
	mirror  atomic.Pointer[virtualIndex] // which flows belong to which virtual

	mu        sync.Mutex // serialises configuration changes and role changes
	nft       *nft.Table
	injTable  *conntrack.Table // for the standby's injections
	announcer *link.Announcer
	fsm       *failover.Machine
	active    bool
	adopted   map[string]bool // self IPs that were on their interface before we looked
	added     map[string]bool // self IPs we added

	roles roleRunner // the mirror sender (active) or receiver (standby)

	overruns  atomic.Uint64               // conntrack event socket overruns
	entries   atomic.Pointer[entryCounts] // mirrored entries by state, as the last dump counted them
	toActive  atomic.Uint64               // transitions into Active
	toStandby atomic.Uint64               // transitions into Standby
	tickled   atomic.Uint64               // connections tickled after takeovers
	tickleAns atomic.Uint64               // endpoints that answered a tickle

	timeoutMu sync.Mutex
	timeouts  map[[2]uint8]uint32 // conntrack state timeouts, read once

	watchMu   sync.Mutex
	watchers  map[int]func()
	nextWatch int
}

// New loads the configuration and opens the kernel handles in the current network namespace.
func New(opts Options) (*Daemon, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{
		opts:     opts,
		logger:   opts.Logger,
		store:    config.Store{Path: opts.ConfigPath},
		adopted:  map[string]bool{},
		added:    map[string]bool{},
		watchers: map[int]func(){},
		timeouts: map[[2]uint8]uint32{},
	}
	cfg, err := d.store.Load(opts.Name)
	if err != nil {
		return nil, err
	}
	d.running.Store(&cfg)
	d.mirror.Store(newVirtualIndex(&cfg))
	if d.nft, err = nft.New(TableName); err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	if d.injTable, err = conntrack.Open(); err != nil {
		return nil, fmt.Errorf("open conntrack: %w", err)
	}
	d.announcer = link.NewAnnouncer(d.logger.With("component", "garp"))
	d.roles.d = d
	return d, nil
}

// Check validates a configuration file without applying it (applianced --check).
func Check(path, name string) error {
	c, err := config.Store{Path: path}.Load(name)
	if err != nil {
		return err
	}
	return buildRuleset(&c).Validate()
}

// Config returns the running configuration. Callers must not change it.
func (d *Daemon) Config() config.Config { return *d.running.Load() }

// sharedDigest is config.Digest of one running configuration.
type sharedDigest struct {
	of      *config.Config
	digest  string
	payload []byte // digest as the heartbeats carry it; read only
}

// sharedDigest returns config.Digest of the running configuration's shared part. Every
// heartbeat carries it, so it is computed once per configuration rather than each time
// (a TOML encoding and a hash: most of an idle daemon's CPU when it was not kept).
func (d *Daemon) sharedDigest() *sharedDigest {
	cfg := d.running.Load()
	if m := d.digest.Load(); m != nil && m.of == cfg {
		return m
	}
	digest := config.Digest(cfg.Shared)
	m := &sharedDigest{of: cfg, digest: digest, payload: []byte(digest)}
	d.digest.Store(m)
	return m
}

// Run brings the kernel to the configuration and runs the HA machinery until ctx ends. On
// the way out the mirror stream and the listeners stop; the nftables table and the kernel's
// connection entries stay, so that traffic keeps flowing through a daemon restart.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.injTable.Close()
	for _, s := range []struct{ name, value, unless string }{
		{"net.ipv4.ip_forward", "1", "virtual servers do not forward IPv4"},
		{"net.ipv6.conf.all.forwarding", "1", "virtual servers do not forward IPv6"},
		// A connection that was not mirrored must be reset by a new active, not picked up
		// mid-stream and sent to whichever pool member the next packet chooses.
		{"net.netfilter.nf_conntrack_tcp_loose", "0", "a new active picks up connections it does not know mid-stream"},
		// Every entry must carry the event extension, or the kernel never reports its
		// updates and its end. The default (2) adds it only while an event listener exists
		// somewhere on the machine, and a standby has none: the entries it injects would
		// be silent once it takes over, and their ends never reach the next standby.
		{"net.netfilter.nf_conntrack_events", "1", "connections mirrored to this device are not followed once it takes over; only digests repair the peer"},
	} {
		if err := link.SetSysctl(s.name, s.value); err != nil {
			d.logger.Warn("cannot set sysctl: "+s.unless, "name", s.name, "value", s.value, slog.Any("err", err))
		}
	}
	cfg := d.Config()
	d.mu.Lock()
	d.roles.base = ctx
	// A device starts Standby: addresses a previous life left floating are taken down
	// before anything else, so that two devices never answer for them.
	d.removeFloating(&cfg, nil)
	err := d.reconcile(&cfg, &cfg)
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("apply configuration: %w", err)
	}
	fsm, err := failover.New(d.failoverConfig(&cfg), hooks{d}, d.logger)
	if err != nil {
		return fmt.Errorf("start failover: %w", err)
	}
	d.mu.Lock()
	d.fsm = fsm
	d.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := fsm.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			d.logger.Error("failover machine stopped", slog.Any("err", err))
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		d.runConfigSync(ctx)
	}()
	<-ctx.Done()
	d.mu.Lock()
	d.roles.setActive(false)
	d.roles.stop()
	d.mu.Unlock()
	d.roles.bg.Wait()
	return nil
}

// Update applies change to a copy of the running configuration; see tmsh.Core.
func (d *Daemon) Update(ctx context.Context, change func(*config.Config) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cur := d.Config()
	next := cur.Clone()
	if err := change(&next); err != nil {
		return err
	}
	return d.commit(&cur, &next)
}

// commit makes next the running configuration: validate, save, reconcile. If the kernel
// refuses, the previous configuration is saved and reconciled again. Called with mu held.
func (d *Daemon) commit(cur, next *config.Config) error {
	if err := next.Validate(); err != nil {
		return err
	}
	if err := buildRuleset(next).Validate(); err != nil {
		return config.Invalid("%v", err)
	}
	if err := d.store.Save(*next); err != nil {
		return err
	}
	if err := d.reconcile(cur, next); err != nil {
		d.logger.Error("reconcile failed, rolling back", slog.Any("err", err))
		if serr := d.store.Save(*cur); serr != nil {
			d.logger.Error("restore saved configuration", slog.Any("err", serr))
		}
		if rerr := d.reconcile(next, cur); rerr != nil {
			d.logger.Error("restore kernel state", slog.Any("err", rerr))
		}
		return fmt.Errorf("apply configuration: %w", err)
	}
	d.running.Store(next)
	oldIndex := d.mirror.Swap(newVirtualIndex(next))
	if !oldIndex.sameMirroring(d.mirror.Load()) {
		// Connections of a virtual whose mirroring was just enabled exist already, and
		// those of one just disabled must leave the standby: a full sync does both.
		d.roles.resync()
	}
	if d.fsm != nil {
		if err := d.fsm.Reconfigure(d.failoverConfig(next)); err != nil {
			d.logger.Warn("reconfigure failover", slog.Any("err", err))
		}
	}
	d.roles.refresh(next)
	d.notifyWatchers()
	return nil
}

// Save writes the running configuration to its files.
func (d *Daemon) Save(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.store.Save(d.Config())
}

// Load replaces the running configuration with what its files hold.
func (d *Daemon) Load(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	loaded, err := d.store.Load(d.opts.Name)
	if err != nil {
		return err
	}
	cur := d.Config()
	return d.commit(&cur, &loaded)
}

// ApplyShared applies a shared configuration that the peer synced to us.
func (d *Daemon) ApplyShared(ctx context.Context, data []byte, from string) error {
	shared, err := config.DecodeShared(data)
	if err != nil {
		return err
	}
	return d.Update(ctx, func(c *config.Config) error {
		c.Shared = shared
		return nil
	})
}

// ConfigSync pushes the shared configuration to the other devices of group.
func (d *Daemon) ConfigSync(ctx context.Context, group string) error {
	cfg := d.Config()
	g, i := cfg.Local.FindDeviceGroup(group)
	if i < 0 {
		return config.NotFound("device group", "/Common/"+group)
	}
	if !contains(g.Devices, cfg.Local.Device.Name) {
		return config.Invalid("cm device-group %s: this device (%s) is not a member", group, cfg.Local.Device.Name)
	}
	data, err := config.EncodeShared(cfg.Shared)
	if err != nil {
		return err
	}
	for _, name := range g.Devices {
		if name == cfg.Local.Device.Name {
			continue
		}
		peer, _ := cfg.FindPeer(name)
		if !peer.ConfigsyncIP.IsValid() {
			return config.Invalid("cm device %s has no configsync-ip", name)
		}
		if err := configsync.Push(ctx, netip.AddrPortFrom(peer.ConfigsyncIP, configsync.Port), cfg.Local.Device.Name, data); err != nil {
			return err
		}
		d.logger.Info("config sync pushed", "group", group, "peer", name)
	}
	return nil
}

// runConfigSync serves config syncs on our configsync address, restarting when it changes.
func (d *Daemon) runConfigSync(ctx context.Context) {
	var cur netip.Addr
	var stop context.CancelFunc
	var done chan struct{}
	changed := make(chan struct{}, 1)
	unsub := d.onConfigChange(func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer unsub()
	for {
		want := d.Config().Local.Device.ConfigsyncIP
		if want != cur {
			if stop != nil {
				stop()
				<-done
				stop = nil
			}
			cur = want
			if want.IsValid() {
				sctx, cancel := context.WithCancel(ctx)
				stop, done = cancel, make(chan struct{})
				srv := configsync.NewServer([]netip.AddrPort{netip.AddrPortFrom(want, configsync.Port)}, d, d.logger.With("component", "configsync"))
				go func() { defer close(done); srv.Run(sctx) }()
			}
		}
		select {
		case <-ctx.Done():
			if stop != nil {
				stop()
				<-done
			}
			return
		case <-changed:
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
