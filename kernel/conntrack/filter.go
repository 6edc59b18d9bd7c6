package conntrack

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// EventFilter says which events a Listener's socket drops in the kernel (Listener.SetFilter).
// The zero EventFilter keeps every event.
type EventFilter struct {
	// IgnorePortIDs drops the events of changes that sockets with these netlink port ids
	// asked for (Event.PortID): pass the PortID of the Tables one injects with. Port id 0
	// (the kernel's own changes) cannot be ignored.
	IgnorePortIDs []uint32
	// EstablishedTCP keeps a TCP entry's new and update events only once the connection is
	// assured (IPS_ASSURED, set when the handshake completes) and either in ESTABLISHED or
	// carrying no TCP state (an event of a status or mark change), and its destroy event
	// only if it was assured. The handshake's events, those of the closing states and all
	// those of a connection never established (a SYN flood's) are dropped; every event of
	// other protocols is kept. A connection then costs its listener two events
	// (established, destroyed) rather than six or more.
	EstablishedTCP bool
}

// Offsets in a ctnetlink event: struct nlmsghdr, then struct nfgenmsg, then attributes.
const (
	offMsgType = 4  // nlmsghdr.nlmsg_type
	offPortID  = 12 // nlmsghdr.nlmsg_pid
	offAttrs   = unix.NLMSG_HDRLEN + 4
	nlaHdrLen  = 4
)

// program returns the classic BPF program of f, or nil when f keeps everything.
func (f EventFilter) program() ([]unix.SockFilter, error) {
	if len(f.IgnorePortIDs) == 0 && !f.EstablishedTCP {
		return nil, nil
	}
	if len(f.IgnorePortIDs) > 100 {
		return nil, fmt.Errorf("filter conntrack events: %d port ids, at most 100", len(f.IgnorePortIDs))
	}
	var a assembler
	if len(f.IgnorePortIDs) > 0 {
		a.emit(bpf.LoadAbsolute{Off: offPortID, Size: 4})
		for _, id := range f.IgnorePortIDs {
			if id == 0 {
				return nil, fmt.Errorf("filter conntrack events: port id 0 is the kernel's")
			}
			a.jumpIf(bpf.JumpEqual, hostOrder32(id), "drop", "")
		}
	}
	if f.EstablishedTCP {
		// Anything this program cannot read is kept: a spurious event costs a read, a lost one
		// an entry.
		a.findAttr("keep", ctaTupleOrig, ctaTupleProto, ctaProtoNum)
		a.emit(bpf.TAX{}, bpf.LoadIndirect{Off: nlaHdrLen, Size: 1})
		a.jumpIf(bpf.JumpEqual, unix.IPPROTO_TCP, "", "keep")
		a.findAttr("keep", ctaStatus)
		a.emit(bpf.TAX{}, bpf.LoadIndirect{Off: nlaHdrLen, Size: 4}) // big-endian, as BPF reads
		a.jumpIf(bpf.JumpBitsSet, StatusAssured, "", "drop")
		destroy := uint32(hostOrder16(nfnlSubsysCTNetlink<<8 | ipctnlMsgCTDelete))
		a.emit(bpf.LoadAbsolute{Off: offMsgType, Size: 2})
		a.jumpIf(bpf.JumpEqual, destroy, "keep", "")
		a.findAttr("keep", ctaProtoInfo, ctaProtoInfoTCP, ctaProtoInfoTCPState)
		a.emit(bpf.TAX{}, bpf.LoadIndirect{Off: nlaHdrLen, Size: 1})
		a.jumpIf(bpf.JumpEqual, uint32(TCPStateEstablished), "keep", "drop")
	}
	a.label("keep")
	a.emit(bpf.RetConstant{Val: 0xffffffff})
	a.label("drop")
	a.emit(bpf.RetConstant{Val: 0})
	return a.assemble()
}

// Message types of ctnetlink (enum cntl_msg_types) and its subsystem id.
const (
	nfnlSubsysCTNetlink = 1 // NFNL_SUBSYS_CTNETLINK
	ipctnlMsgCTDelete   = 2 // IPCTNL_MSG_CT_DELETE
)

// hostOrder16 and hostOrder32 give the value that BPF's big-endian loads read for a field
// the kernel writes in host order (the netlink header's).
func hostOrder16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func hostOrder32(v uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return binary.BigEndian.Uint32(b[:])
}

// assembler builds a classic BPF program whose jumps name labels ("" is the next
// instruction), resolved by assemble.
type assembler struct {
	insts  []bpf.Instruction
	jumps  map[int][2]string // instruction index: its true and false labels
	labels map[string]int
}

func (a *assembler) emit(insts ...bpf.Instruction) { a.insts = append(a.insts, insts...) }

func (a *assembler) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	a.labels[name] = len(a.insts)
}

func (a *assembler) jumpIf(cond bpf.JumpTest, val uint32, onTrue, onFalse string) {
	if a.jumps == nil {
		a.jumps = map[int][2]string{}
	}
	a.jumps[len(a.insts)] = [2]string{onTrue, onFalse}
	a.emit(bpf.JumpIf{Cond: cond, Val: val})
}

// findAttr leaves in A the offset of the attribute at path (top level first, then nested
// in it), or jumps to missing when one is absent.
func (a *assembler) findAttr(missing string, path ...uint32) {
	a.emit(bpf.LoadConstant{Dst: bpf.RegA, Val: offAttrs})
	for i, typ := range path {
		ext := bpf.ExtNetlinkAttrNested
		if i == 0 {
			ext = bpf.ExtNetlinkAttr
		}
		a.emit(bpf.LoadConstant{Dst: bpf.RegX, Val: typ}, bpf.LoadExtension{Num: ext})
		a.jumpIf(bpf.JumpEqual, 0, missing, "")
	}
}

func (a *assembler) assemble() ([]unix.SockFilter, error) {
	for at, to := range a.jumps {
		j := a.insts[at].(bpf.JumpIf)
		skip := func(name string) (uint8, error) {
			if name == "" {
				return 0, nil
			}
			target, ok := a.labels[name]
			if !ok || target <= at || target-at-1 > 255 {
				return 0, fmt.Errorf("filter conntrack events: bad jump to %q", name)
			}
			return uint8(target - at - 1), nil
		}
		var err error
		if j.SkipTrue, err = skip(to[0]); err != nil {
			return nil, err
		}
		if j.SkipFalse, err = skip(to[1]); err != nil {
			return nil, err
		}
		a.insts[at] = j
	}
	raw, err := bpf.Assemble(a.insts)
	if err != nil {
		return nil, fmt.Errorf("filter conntrack events: %w", err)
	}
	prog := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		prog[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return prog, nil
}
