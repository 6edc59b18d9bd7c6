package bench

import (
	"bufio"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// ParseProcStatCPU returns utime and stime (clock ticks) from the text of /proc/PID/stat. The
// command name (field 2) is in parentheses and may hold spaces or parentheses, so fields
// are counted from the last ')': utime and stime are fields 14 and 15 (proc(5)).
func ParseProcStatCPU(stat string) (utime, stime uint64, err error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("proc stat: no command field")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("proc stat: %d fields after the command, want at least 13", len(f))
	}
	ut, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("proc stat utime: %w", err)
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("proc stat stime: %w", err)
	}
	return ut, st, nil
}

// ParseStatusKB returns a "Key:   N kB" field of /proc/PID/status (VmRSS, VmHWM) in kB.
func ParseStatusKB(status, key string) (uint64, error) {
	sc := bufio.NewScanner(strings.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("status %s: %w", key, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("status: no %s", key)
}

// CacheStats are the counters of one conntrackd cache, from `conntrackd -s`.
type CacheStats struct {
	Active, Created, Updated, Destroyed uint64
}

// ConntrackdStats is what `conntrackd -s` says about its two caches.
type ConntrackdStats struct {
	Internal, External CacheStats
}

var ctdCounter = regexp.MustCompile(`^(current active connections|connections created|connections updated|connections destroyed):\s+(\d+)`)

// ParseConntrackdStats reads the "cache internal:" and "cache external:" sections of
// `conntrackd -s`.
func ParseConntrackdStats(out string) (ConntrackdStats, error) {
	var st ConntrackdStats
	var cur *CacheStats
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "cache internal"):
			cur = &st.Internal
			seen++
			continue
		case strings.HasPrefix(line, "cache external"):
			cur = &st.External
			seen++
			continue
		case line == "":
			cur = nil
			continue
		}
		if cur == nil {
			continue
		}
		m := ctdCounter.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseUint(m[2], 10, 64)
		switch m[1] {
		case "current active connections":
			cur.Active = n
		case "connections created":
			cur.Created = n
		case "connections updated":
			cur.Updated = n
		case "connections destroyed":
			cur.Destroyed = n
		}
	}
	if seen == 0 {
		return st, fmt.Errorf("conntrackd -s: no cache sections in %q", firstLine(out))
	}
	return st, nil
}

var statusLine = regexp.MustCompile(`(?m)^Status\s+(\S+)`)

// ParseFailoverStatus returns the Status of `tmsh show cm failover-status` (ACTIVE,
// STANDBY, OFFLINE), or "" when there is none.
func ParseFailoverStatus(out string) string {
	if m := statusLine.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return ""
}

// ParseRows returns the "Key   value" rows of a tmsh statistics block such as Sys::Mirror
// (keys are separated from values by two or more spaces).
func ParseRows(out string) map[string]string {
	rows := map[string]string{}
	sep := regexp.MustCompile(`\s{2,}`)
	for _, line := range strings.Split(out, "\n") {
		parts := sep.Split(strings.TrimSpace(line), 2)
		if len(parts) == 2 {
			rows[parts[0]] = parts[1]
		}
	}
	return rows
}

var totalRecords = regexp.MustCompile(`Total records returned: (\d+)`)

// ParseTotalRecords returns N of "Total records returned: N", or -1.
func ParseTotalRecords(out string) int {
	m := totalRecords.FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func tupleKey(proto, src, dst, sport, dport string) (TupleKey, bool) {
	s, err1 := netip.ParseAddr(src)
	d, err2 := netip.ParseAddr(dst)
	sp, err3 := strconv.ParseUint(sport, 10, 16)
	dp, err4 := strconv.ParseUint(dport, 10, 16)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return TupleKey{}, false
	}
	p := uint8(6)
	if proto == "udp" {
		p = 17
	}
	return TupleKey{p, netip.AddrPortFrom(s, uint16(sp)), netip.AddrPortFrom(d, uint16(dp))}, true
}
