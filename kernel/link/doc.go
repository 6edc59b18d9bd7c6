// Package link manages what the appliance puts on its network interfaces: IP addresses
// (self IPs and floating addresses), sysctls, and the gratuitous ARP and unsolicited
// neighbour advertisements that tell the segment a floating address has moved here.
//
// Every function acts on the network namespace of the calling OS thread, because that is
// where the netlink, packet and ICMPv6 sockets it opens are created and where /proc/sys/net
// is resolved. The daemon runs one process per namespace (started with `ip netns exec`), so
// for it that is simply the process's namespace; a caller that enters another namespace
// with setns(2) must lock its OS thread first (runtime.LockOSThread) and keep it locked for
// the whole call.
//
// The functions keep no state between calls and are safe for concurrent use. Address and
// sysctl changes are idempotent: asking for what is already there changes nothing.
package link
