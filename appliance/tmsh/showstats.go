package tmsh

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/openappliance/appliance/appliance/config"
)

// Options of the show targets.
var (
	fieldFmtOpt  = flagProp("field-fmt", "print the fields as name value pairs, one per line")
	allPropsOpt  = flagProp("all-properties", "print every field")
	membersOpt   = flagProp("members", "print each pool member's status and statistics too")
	showStatOpts = []prop{allPropsOpt, fieldFmtOpt}
)

// trafficGroups are the traffic groups of an HA pair: the floating one that moves with the
// Active device, and the one whose addresses stay on their device.
var trafficGroups = []string{config.FloatingTrafficGroup, config.LocalOnlyTrafficGroup}

type showFunc func(in *Interpreter, ctx context.Context, s *Session, args []Node, w io.Writer) error

// showEntry is one component show prints.
type showEntry struct {
	target
	run showFunc
}

var showEntries []showEntry

func showTargetList() []target {
	statusOnly := func(fn func(io.Writer, FailoverStatus) error) showFunc {
		return func(in *Interpreter, _ context.Context, _ *Session, args []Node, w io.Writer) error {
			if len(args) > 0 {
				return syntaxf("%q unexpected argument", args[0].String())
			}
			return fn(w, in.core.Failover())
		}
	}
	// withFieldFmt prints fields as name value pairs when field-fmt is given.
	withFieldFmt := func(table func(io.Writer, FailoverStatus) error, fields func(FailoverStatus) (string, [][2]string)) showFunc {
		return func(in *Interpreter, _ context.Context, _ *Session, args []Node, w io.Writer) error {
			_, flags, err := statArgs(args, []prop{fieldFmtOpt})
			if err != nil {
				return err
			}
			if len(args) > len(flags) {
				return syntaxf("%q unexpected argument", args[0].String())
			}
			if !flags["field-fmt"] {
				return table(w, in.core.Failover())
			}
			title, f := fields(in.core.Failover())
			return writeFields(w, title, f)
		}
	}
	showEntries = []showEntry{
		{target{module: "cm", component: "failover-status", help: "this device's failover state and its peer's heartbeats", opts: []prop{fieldFmtOpt}},
			withFieldFmt(showFailoverStatus, failoverStatusFields)},
		{target{module: "cm", component: "sync-status", help: "whether the devices' configurations agree", opts: []prop{fieldFmtOpt}},
			withFieldFmt(showSyncStatus, syncStatusFields)},
		{target{module: "cm", component: "traffic-group", help: "which device holds each traffic group", opts: showStatOpts}, (*Interpreter).showTrafficGroup},
		{target{module: "ltm", component: "pool", help: "pool status and connections", kind: findKind("ltm", "pool"), opts: []prop{allPropsOpt, fieldFmtOpt, membersOpt}}, (*Interpreter).showPool},
		{target{module: "ltm", component: "virtual", help: "virtual server status and connections", kind: findKind("ltm", "virtual"), opts: showStatOpts}, (*Interpreter).showVirtual},
		{target{module: "sys", component: "connection", help: "the kernel's connection table", opts: connFilterSpecs}, (*Interpreter).showConnections},
		{target{module: "sys", component: "failover", help: "this device's failover state and for how long"}, statusOnly(showSysFailover)},
		{target{module: "sys", component: "ha-status", help: "the HA table: the features that can cause a failover", opts: []prop{allPropsOpt}}, (*Interpreter).showHAStatus},
		{target{module: "sys", component: "mirror", help: "the connection mirroring channel"}, statusOnly(showSysMirror)},
	}
	out := make([]target, len(showEntries))
	for i, e := range showEntries {
		out[i] = e.target
	}
	return out
}

func (in *Interpreter) show(ctx context.Context, s *Session, args []Node, w io.Writer) error {
	if len(args) == 0 || args[0].IsBlock {
		return syntaxf("show: expected MODULE COMPONENT")
	}
	module := strings.TrimPrefix(args[0].Word, "/")
	if findModule(module) == "" {
		return syntaxf("%q unexpected argument", args[0].Word)
	}
	if len(args) < 2 || args[1].IsBlock {
		return syntaxf("show %s: expected a component", module)
	}
	for _, e := range showEntries {
		if e.module == module && e.component == args[1].Word {
			return e.run(in, ctx, s, args[2:], w)
		}
	}
	return syntaxf("%q unexpected argument", args[1].Word)
}

// statArgs splits show's arguments into object names and flag options.
func statArgs(args []Node, opts []prop) (names []string, flags map[string]bool, err error) {
	flags = map[string]bool{}
	for _, a := range args {
		if a.IsBlock {
			return nil, nil, syntaxf("%q unexpected argument", a.String())
		}
		if _, ok := findProp(opts, a.Word); ok {
			flags[a.Word] = true
			continue
		}
		names = append(names, a.Word)
	}
	return names, flags, nil
}

// connStats are the figures the connection table gives: current connections by virtual
// server, and by virtual server and pool member. They are the only per-object statistics
// the appliance has: the kernel keeps byte and packet counters only with conntrack
// accounting on, and a total needs a counter kept since boot, so neither is printed.
type connStats struct {
	byVirtual map[string]int
	byMember  map[string]map[netip.AddrPort]int
}

func (in *Interpreter) connStats(ctx context.Context) (connStats, error) {
	st := connStats{byVirtual: map[string]int{}, byMember: map[string]map[netip.AddrPort]int{}}
	err := in.core.Connections(ctx, ConnFilter{}, func(c Connection) error {
		st.byVirtual[c.Virtual]++
		m := st.byMember[c.Virtual]
		if m == nil {
			m = map[netip.AddrPort]int{}
			st.byMember[c.Virtual] = m
		}
		m[c.SSServer]++
		return nil
	})
	return st, wrapf(err, "read the connection table")
}

// poolConns counts the connections to member of pool over the virtual servers using it.
func (st connStats) poolConns(cfg *config.Config, pool string, member netip.AddrPort, all bool) int {
	n := 0
	for _, v := range cfg.Shared.Virtuals {
		if v.Pool != pool {
			continue
		}
		for m, c := range st.byMember[v.Name] {
			if all || m == member {
				n += c
			}
		}
	}
	return n
}

const noServiceCheck = "The children pool member(s) either don't have service checking enabled, or service check results are not available yet"

func statusReason(disabled bool, what string) (state, reason string) {
	if disabled {
		return "disabled", "The " + what + " has been disabled by the user"
	}
	return "enabled", noServiceCheck
}

// statSelection is what a show of ltm objects works on: the objects selected, the options
// given, the configuration they were selected from and the connection counts.
type statSelection struct {
	names []string
	flags map[string]bool
	cfg   config.Config
	st    connStats
}

// selectStats reads a show's arguments for objects of module component, and counts the
// connections.
func (in *Interpreter) selectStats(ctx context.Context, s *Session, module, component string, args []Node, opts []prop) (statSelection, error) {
	var sel statSelection
	patterns, flags, err := statArgs(args, opts)
	if err != nil {
		return sel, err
	}
	sel.flags, sel.cfg = flags, in.core.Config()
	if sel.names, err = in.match(s, &sel.cfg, findKind(module, component), patterns); err != nil {
		return sel, err
	}
	sel.st, err = in.connStats(ctx)
	return sel, err
}

func (in *Interpreter) showVirtual(ctx context.Context, s *Session, args []Node, w io.Writer) error {
	sel, err := in.selectStats(ctx, s, "ltm", "virtual", args, showStatOpts)
	if err != nil {
		return err
	}
	names, flags, cfg, st := sel.names, sel.flags, sel.cfg, sel.st
	var b strings.Builder
	for _, name := range names {
		v, _ := cfg.Shared.FindVirtual(name)
		state, reason := statusReason(v.Disabled, "virtual server")
		if v.Pool == "" && !v.Disabled {
			reason = "The virtual server has no pool"
		}
		dest := formatAddrPort(v.Destination)
		if flags["field-fmt"] {
			fmt.Fprintf(&b, "ltm virtual %s {\n", config.DisplayPath(name))
			fmt.Fprintf(&b, "    clientside.cur-conns %d\n", st.byVirtual[name])
			fmt.Fprintf(&b, "    destination %s\n", dest)
			fmt.Fprintf(&b, "    status.availability-state unknown\n")
			fmt.Fprintf(&b, "    status.enabled-state %s\n", state)
			fmt.Fprintf(&b, "    status.status-reason %s\n", reason)
			b.WriteString("}\n")
			continue
		}
		header(&b, "Ltm::Virtual Server: "+config.DisplayPath(name), 66)
		b.WriteString("Status\n")
		fmt.Fprintf(&b, "  %-16s : %s\n", "Availability", "unknown")
		fmt.Fprintf(&b, "  %-16s : %s\n", "State", state)
		fmt.Fprintf(&b, "  %-16s : %s\n", "Reason", reason)
		fmt.Fprintf(&b, "  %-16s : %s\n", "Destination", dest)
		fmt.Fprintf(&b, "  %-16s : %s\n\n", "Mirror", enabledWord(v.Mirror))
		fmt.Fprintf(&b, "%-34s  %10s\n", "Traffic", "ClientSide")
		fmt.Fprintf(&b, "  %-32s  %10d\n\n", "Current Connections", st.byVirtual[name])
	}
	_, err = io.WriteString(w, b.String())
	return err
}

func (in *Interpreter) showPool(ctx context.Context, s *Session, args []Node, w io.Writer) error {
	sel, err := in.selectStats(ctx, s, "ltm", "pool", args, []prop{allPropsOpt, fieldFmtOpt, membersOpt})
	if err != nil {
		return err
	}
	names, flags, cfg, st := sel.names, sel.flags, sel.cfg, sel.st
	var b strings.Builder
	for _, name := range names {
		p, _ := cfg.Shared.FindPool(name)
		part, _ := config.SplitPath(name)
		active := 0
		for _, m := range p.Members {
			if !m.Disabled {
				active++
			}
		}
		state, reason := "enabled", noServiceCheck
		if len(p.Members) == 0 {
			reason = "The pool has no members"
		} else if active == 0 {
			state, reason = "disabled", "The children pool member(s) are disabled"
		}
		total := st.poolConns(&cfg, name, netip.AddrPort{}, true)
		if flags["field-fmt"] {
			fmt.Fprintf(&b, "ltm pool %s {\n", config.DisplayPath(name))
			fmt.Fprintf(&b, "    active-member-cnt %d\n", active)
			if flags["members"] {
				b.WriteString("    members {\n")
				for _, m := range p.Members {
					mstate, _ := statusReason(m.Disabled, "pool member")
					fmt.Fprintf(&b, "        %s {\n", config.DisplayPath(config.FullPath(formatAddrPort(m.Address), part)))
					fmt.Fprintf(&b, "            addr %s\n", m.Address.Addr())
					fmt.Fprintf(&b, "            port %d\n", m.Address.Port())
					fmt.Fprintf(&b, "            serverside.cur-conns %d\n", st.poolConns(&cfg, name, m.Address, false))
					fmt.Fprintf(&b, "            status.availability-state unknown\n")
					fmt.Fprintf(&b, "            status.enabled-state %s\n", mstate)
					b.WriteString("        }\n")
				}
				b.WriteString("    }\n")
			}
			fmt.Fprintf(&b, "    member-cnt %d\n", len(p.Members))
			fmt.Fprintf(&b, "    serverside.cur-conns %d\n", total)
			fmt.Fprintf(&b, "    status.availability-state unknown\n")
			fmt.Fprintf(&b, "    status.enabled-state %s\n", state)
			fmt.Fprintf(&b, "    status.status-reason %s\n", reason)
			b.WriteString("}\n")
			continue
		}
		header(&b, "Ltm::Pool: "+config.DisplayPath(name), 66)
		b.WriteString("Status\n")
		row := func(k string, v any) { fmt.Fprintf(&b, "  %-22s : %v\n", k, v) }
		row("Availability", "unknown")
		row("State", state)
		row("Reason", reason)
		row("Monitor", orNone(p.Monitor))
		row("Current Active Members", active)
		row("Total Members", len(p.Members))
		fmt.Fprintf(&b, "\n%-24s  %10s\n", "Traffic", "ServerSide")
		fmt.Fprintf(&b, "  %-22s  %10d\n", "Current Connections", total)
		if flags["members"] {
			for _, m := range p.Members {
				mstate, mreason := statusReason(m.Disabled, "pool member")
				session := "enabled"
				if m.Disabled {
					session = "user-disabled"
				} else {
					mreason = "Pool member does not have service checking enabled"
				}
				b.WriteString("\n")
				line := "  " + strings.Repeat("-", 56) + "\n"
				b.WriteString(line)
				fmt.Fprintf(&b, "  Ltm::Pool Member: %s\n", config.DisplayPath(config.FullPath(formatAddrPort(m.Address), part)))
				b.WriteString(line)
				mrow := func(k string, v any) { fmt.Fprintf(&b, "  |   %-14s : %v\n", k, v) }
				b.WriteString("  | Status\n")
				mrow("Availability", "unknown")
				mrow("State", mstate)
				mrow("Reason", mreason)
				mrow("Monitor Status", "unchecked")
				mrow("Session Status", session)
				b.WriteString("  |\n")
				fmt.Fprintf(&b, "  | %-22s  %10s\n", "Traffic", "ServerSide")
				fmt.Fprintf(&b, "  |   %-20s  %10d\n", "Current Connections", st.poolConns(&cfg, name, m.Address, false))
			}
		}
		b.WriteString("\n")
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// trafficGroupRow is one device's standing in a traffic group.
type trafficGroupRow struct {
	group, device, status string
	nextActive            string
}

func trafficGroupRows(st FailoverStatus) []trafficGroupRow {
	local := strings.ToLower(st.State)
	rows := []trafficGroupRow{{group: config.FloatingTrafficGroup, device: st.Device, status: local, nextActive: "false"}}
	if st.Peer != "" {
		peer := "offline"
		if st.PeerAlive {
			peer = strings.ToLower(st.PeerState)
		}
		// The next active is the device that takes over when the active one fails: the
		// standby that is alive.
		rows[0].nextActive = fmt.Sprint(local == "standby" && peer == "active")
		rows = append(rows, trafficGroupRow{group: config.FloatingTrafficGroup, device: st.Peer, status: peer,
			nextActive: fmt.Sprint(peer == "standby" && local == "active")})
	}
	return append(rows, trafficGroupRow{group: config.LocalOnlyTrafficGroup, device: "-", status: "-", nextActive: "-"})
}

func (in *Interpreter) showTrafficGroup(_ context.Context, _ *Session, args []Node, w io.Writer) error {
	names, flags, err := statArgs(args, showStatOpts)
	if err != nil {
		return err
	}
	for _, n := range names {
		if !slices.Contains(trafficGroups, strings.TrimPrefix(n, "/Common/")) {
			return config.NotFound("traffic group", displayFull(&kind{}, strings.TrimPrefix(n, "/Common/")))
		}
	}
	want := func(g string) bool {
		return len(names) == 0 || slices.ContainsFunc(names, func(n string) bool { return strings.TrimPrefix(n, "/Common/") == g })
	}
	var b strings.Builder
	rows := trafficGroupRows(in.core.Failover())
	if flags["field-fmt"] {
		for _, r := range rows {
			if !want(r.group) || r.device == "-" {
				continue
			}
			fmt.Fprintf(&b, "cm traffic-group %s:%s {\n    device %s\n    failover-state %s\n    next-active %s\n    traffic-group %s\n}\n",
				r.group, r.device, r.device, r.status, r.nextActive, r.group)
		}
		_, err = io.WriteString(w, b.String())
		return err
	}
	line := strings.Repeat("-", 77) + "\n"
	b.WriteString(line)
	b.WriteString("CM::Traffic-Group\n")
	fmt.Fprintf(&b, "%-25s %-14s %-8s %-7s %-5s %s\n", "Name", "Device", "Status", "Next", "Load", "Next Active")
	fmt.Fprintf(&b, "%-25s %-14s %-8s %-7s %-5s %s\n", "", "", "", "Active", "", "Load")
	b.WriteString(line)
	for _, r := range rows {
		if want(r.group) {
			fmt.Fprintf(&b, "%-25s %-14s %-8s %-7s %-5s %s\n", r.group, r.device, r.status, r.nextActive, "-", "-")
		}
	}
	b.WriteString("\n")
	_, err = io.WriteString(w, b.String())
	return err
}

// haFeature is one row of the HA table: a feature that can cause a failover.
type haFeature struct {
	feature, key, action string
	enabled, failed      bool
	timeout              string
}

// showHAStatus prints the HA table. The appliance's failover features are the daemon's own
// liveness (it answers, so it runs) and network failover (heartbeats from the peer); without
// all-properties only the features in a failed state are printed, as on BIG-IP.
func (in *Interpreter) showHAStatus(_ context.Context, _ *Session, args []Node, w io.Writer) error {
	_, flags, err := statArgs(args, []prop{allPropsOpt})
	if err != nil {
		return err
	}
	if len(args) > len(flags) {
		return syntaxf("%q unexpected argument", args[0].String())
	}
	st := in.core.Failover()
	cfg := in.core.Config()
	network := false
	if g, ok := cfg.FailoverGroup(); ok {
		network = g.NetworkFailover
	}
	peer := st.Peer
	if peer == "" {
		peer = "-"
	}
	features := []haFeature{
		{feature: "daemon-heartbeat", key: "applianced", action: "go-offline", enabled: true, timeout: "-"},
		{feature: "network-failover", key: peer, action: "go-active", enabled: network, failed: network && st.Peer != "" && !st.PeerAlive,
			timeout: strconv.FormatFloat(st.NetTimeout.Seconds(), 'f', -1, 64)},
	}
	var b strings.Builder
	line := strings.Repeat("-", 80) + "\n"
	b.WriteString(line)
	b.WriteString("Sys::HA Status\n")
	fmt.Fprintf(&b, "%-20s %-14s %-12s %-8s %-7s %s\n", "Feature", "Key", "Action", "Enabled", "Failed", "Timeout")
	b.WriteString(line)
	for _, f := range features {
		if flags["all-properties"] || f.failed {
			fmt.Fprintf(&b, "%-20s %-14s %-12s %-8t %-7t %s\n", f.feature, f.key, f.action, f.enabled, f.failed, f.timeout)
		}
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// writeFields prints a field-fmt block: the object's title, then name value pairs.
func writeFields(w io.Writer, title string, fields [][2]string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s {\n", title)
	for _, f := range fields {
		fmt.Fprintf(&b, "    %s %s\n", f[0], f[1])
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func failoverStatusFields(st FailoverStatus) (string, [][2]string) {
	active := 0
	if st.State == "Active" {
		active = 1
	}
	return "cm failover-status", [][2]string{
		{"color", failoverColor(st.State)},
		{"status", strings.ToUpper(st.State)},
		{"summary", fmt.Sprintf("%d/1 active", active)},
	}
}

func syncStatusFields(st FailoverStatus) (string, [][2]string) {
	return "cm sync-status", [][2]string{
		{"color", syncColor(st.SyncStatus)},
		{"status", st.SyncStatus},
		{"summary", st.SyncSummary},
	}
}
