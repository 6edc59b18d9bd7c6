package nft

import (
	"errors"
	"fmt"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// maxTableName is NFT_TABLE_MAXNAMELEN less the terminating NUL.
const maxTableName = unix.NFT_TABLE_MAXNAMELEN - 1

// sockBuf is the netlink socket buffer size asked for, both ways. A batch goes to the
// kernel in one sendmsg, which fails with EMSGSIZE past the send buffer, and the kernel
// acknowledges every message of it at once after running it, which overruns a small
// receive buffer (ENOBUFS). A thousand virtuals of four members are a 1.4 MB batch and
// 4000 acks; ten thousand still fit (but take 10 s in the kernel). nft grows its
// buffers the same way (mnl_set_sndbuffer).
const sockBuf = 64 << 20

// Table owns one nftables table (family inet) in the network namespace that was current
// when New was called, and touches nothing else. Its methods may be called from any
// goroutine and are serialised; each opens its own netlink socket in that namespace.
type Table struct {
	name string

	mu     sync.Mutex
	ns     netns.NsHandle // kept open so every call reaches the same namespace; -1 with a test dialer
	opts   []nftables.ConnOption
	closed bool
}

// New returns the Table called name in the calling thread's current network namespace
// (the caller locks its OS thread when that is not the process's namespace). It does
// not touch the kernel's table. Close releases the namespace handle.
func New(name string) (*Table, error) {
	if err := checkTableName(name); err != nil {
		return nil, err
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("nft table %s: get current netns: %w", name, err)
	}
	t := newTable(name, nftables.WithNetNSFd(int(ns)), nftables.WithSockOptions(setSockBufs))
	t.ns = ns
	return t, nil
}

// newTable is New without a namespace: tests give a fake transport in opts.
func newTable(name string, opts ...nftables.ConnOption) *Table {
	return &Table{name: name, ns: -1, opts: opts}
}

func checkTableName(name string) error {
	if name == "" || len(name) > maxTableName {
		return fmt.Errorf("nft table name %q: want 1 to %d bytes", name, maxTableName)
	}
	return nil
}

// Name is the table's name.
func (t *Table) Name() string { return t.name }

// Apply makes the kernel's table equal rs in one netlink batch: the old table (if any)
// is deleted and the new one added in the same transaction, so the change is atomic and
// applying the same rs again is harmless. rs is validated first; on any error nothing
// in the kernel changes.
//
// Connections already set up keep their NAT binding: conntrack remembers it, and the
// nat chains only see a connection's first packet.
func (t *Table) Apply(rs Ruleset) error {
	if err := rs.Validate(); err != nil {
		return fmt.Errorf("apply nft table %s: %w", t.name, err)
	}
	c := build(t.name, rs)
	err := t.commit(func(conn *nftables.Conn) error {
		deleteTable(conn, c.table)
		conn.AddTable(c.table)
		for _, ch := range c.chains {
			conn.AddChain(ch)
		}
		for _, r := range c.rules {
			if r.set != nil {
				if err := conn.AddSet(r.set, r.elems); err != nil {
					return fmt.Errorf("add map for %s: %w", r.rule.Chain.Name, err)
				}
			}
			conn.AddRule(r.rule)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("apply nft table %s: %w", t.name, err)
	}
	return nil
}

// Remove deletes the table if it exists. Removing a missing table is not an error.
func (t *Table) Remove() error {
	err := t.commit(func(conn *nftables.Conn) error {
		deleteTable(conn, &nftables.Table{Name: t.name, Family: nftables.TableFamilyINet})
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove nft table %s: %w", t.name, err)
	}
	return nil
}

// Close releases the namespace handle. It does not remove the table: the rules are
// meant to outlive the process (the daemon restarting must not drop traffic).
// Calls after Close fail.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.ns >= 0 {
		return t.ns.Close()
	}
	return nil
}

// commit queues fill's messages on a fresh connection and sends them as one batch.
func (t *Table) commit(fill func(*nftables.Conn) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	conn, err := nftables.New(t.opts...)
	if err != nil {
		return fmt.Errorf("open nftables conn: %w", err)
	}
	if err := fill(conn); err != nil {
		return err // nothing was sent: the queued messages die with conn
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("netlink batch: %w", err)
	}
	return nil
}

// deleteTable queues the deletion of table whether or not it exists. Deleting a missing
// table would fail the whole batch, and adding one that exists is a no-op in nf_tables
// (NLM_F_CREATE without NLM_F_EXCL), so add-then-delete always works, with no read
// before the write that could race with another writer.
func deleteTable(conn *nftables.Conn, table *nftables.Table) {
	conn.AddTable(table)
	conn.DelTable(table)
}

// setSockBufs grows the socket's buffers past wmem_max and rmem_max (we hold
// CAP_NET_ADMIN, which nf_tables needs anyway), falling back to the capped options.
func setSockBufs(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink raw conn: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], sockBuf); err != nil {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], sockBuf); err != nil {
					serr = errors.Join(serr, err)
				}
			}
		}
	}); err != nil {
		return fmt.Errorf("netlink raw conn: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set netlink socket buffers: %w", serr)
	}
	return nil
}
