package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/openappliance/appliance/appliance/api"
	"github.com/openappliance/appliance/tests/labnet"
)

// The appliance's management address and the client's, on a veth pair between the two
// namespaces (TEST-NET-1, RFC 5737).
const (
	mgmtAddr   = "192.0.2.10"
	clientAddr = "192.0.2.1"
)

// account is a test login. The accounts exist only in the test's own /etc/passwd, which
// sshd and applianced see through a bind mount in their private mount namespaces: the
// host's users are never touched.
type account struct {
	name string
	uid  int
}

var (
	admin   = account{"admin", 64101}   // BIG-IP's built-in administrator: role admin without an object
	alice   = account{"alice", 64102}   // auth user with role guest
	mallory = account{"mallory", 64103} // a Unix account with no auth user object: role no-access
)

// tmshGroup may use the control socket (applianced --socket-group), as etc/install.sh sets up.
const (
	tmshGroup = "appliance"
	tmshGID   = 64100
)

// inside runs a command in the appliance's network namespace and a private mount
// namespace where the test's passwd, group and shadow files stand in for the host's, the
// login records are the test's, and /run is the test's folder (so /run/sshd and
// applianced's default socket folder /run/applianced exist without touching the host's).
// Every step execs, so the pid is the final program's.
const insideScript = `set -eu
root=$1; shift
for f in passwd group shadow; do
	if [ -e "/etc/$f" ]; then mount --bind "$root/etc/$f" "/etc/$f"; fi
done
for f in wtmp btmp lastlog; do
	if [ -e "/var/log/$f" ]; then mount --bind "$root/log/$f" "/var/log/$f"; fi
done
mount --bind "$root/run" /run
exec "$@"`

// env is one test's world: two namespaces, a daemon, sshd, keys and accounts.
type env struct {
	t        *testing.T
	dir      string // everything the test writes
	lbNS     string // the appliance
	clientNS string // where ssh runs
	socket   string // the control socket, as the host sees it
}

// TestSSH logs in over real OpenSSH to a real applianced: commands run non-interactively
// with their exit status, an interactive session has a prompt, history and Ctrl-C, and
// the daemon enforces each user's role.
func TestSSH(t *testing.T) {
	requireRoot(t)
	requireTools(t, "/usr/sbin/sshd", "ssh", "ssh-keygen", "nsenter", "unshare", "ip", "mount")
	e := newEnv(t)
	e.startDaemon()
	e.startSSHD()

	// As root on the box: alice is a guest; a pool to try to change.
	e.tmsh("create auth user alice description \"read only\" partition-access add { all-partitions { role guest } }")
	e.tmsh("create ltm pool p1 description before")

	t.Run("non-interactive", func(t *testing.T) {
		tests := []struct {
			user     account
			command  string
			wantExit int
			stdout   []string // each must appear
			stderr   []string
		}{
			{admin, "show sys failover", 0, []string{"Sys::Failover", "Failover "}, nil},
			{admin, "show sys connection type mirror", 0, []string{"Total records returned: 0"}, nil},
			{admin, "list ltm pool p1", 0, []string{"ltm pool p1 {", "description before"}, nil},
			{admin, "list ltm pool nope", 1, nil, []string{"01020036:3", "(/Common/nope) was not found"}},
			{admin, "frobnicate", 1, nil, []string{"Syntax Error", "frobnicate"}},
			// The login shell is the whole interface: no way out to a Unix shell.
			{admin, "bash -c id", 1, nil, []string{"Syntax Error", `"bash" unknown command`}},
			{alice, "show sys failover", 0, []string{"Sys::Failover"}, nil},
			{alice, "list auth user alice", 0, []string{"auth user alice {", "role guest"}, nil},
			{alice, "modify ltm pool p1 description after", 1, nil,
				[]string{"01070822:3", "User (alice)", "role (guest)", "(modify ltm pool p1 description after)"}},
			{alice, "run sys failover standby", 1, nil, []string{"01070822:3", "(run sys failover standby)"}},
			{mallory, "show sys failover", 1, nil, []string{"01070822:3", "User (mallory) with role (no-access)"}},
			{mallory, "quit", 0, nil, nil},
		}
		for _, tt := range tests {
			t.Run(tt.user.name+"/"+tt.command, func(t *testing.T) {
				stdout, stderr, code := e.ssh(t, tt.user, tt.command)
				t.Logf("ssh %s@%s %q: exit %d, stdout %q, stderr %q", tt.user.name, mgmtAddr, tt.command, code, firstLine(stdout), firstLine(stderr))
				if code != tt.wantExit {
					t.Errorf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantExit, stdout, stderr)
				}
				for _, s := range tt.stdout {
					if !strings.Contains(stdout, s) {
						t.Errorf("stdout lacks %q:\n%s", s, stdout)
					}
				}
				for _, s := range tt.stderr {
					if !strings.Contains(stderr, s) {
						t.Errorf("stderr lacks %q:\n%s", s, stderr)
					}
				}
			})
		}
		// The guest's refused modify changed nothing; the admin's goes through.
		if out := e.tmsh("list ltm pool p1 description"); !strings.Contains(out, "description before") {
			t.Errorf("after the guest's refused modify:\n%s", out)
		}
		if _, stderr, code := e.ssh(t, admin, "modify ltm pool p1 description by-admin"); code != 0 {
			t.Errorf("admin's modify: exit %d: %s", code, stderr)
		}
		if out := e.tmsh("list ltm pool p1 description"); !strings.Contains(out, "description by-admin") {
			t.Errorf("after the admin's modify:\n%s", out)
		}
	})

	t.Run("interactive", func(t *testing.T) {
		term := e.login(t, admin)
		prompt := regexp.MustCompile(`\[admin@lb1:[A-Za-z]+:[A-Za-z ]+\] ~ # `)
		term.expect(prompt)

		term.send("list ltm pool p1\r")
		term.expect(regexp.MustCompile(`ltm pool p1 \{`))
		term.expect(prompt)

		// History: up-arrow recalls the previous line, Enter runs it again.
		term.send("\x1b[A")
		term.expect(regexp.MustCompile(`list ltm pool p1`))
		term.send("\r")
		term.expect(regexp.MustCompile(`ltm pool p1 \{`))
		term.expect(prompt)

		// Ctrl-C cancels the line being typed, not the shell.
		term.send("delete ltm pool p1")
		term.expect(regexp.MustCompile(`delete ltm pool p1`))
		term.send("\x03")
		term.expect(regexp.MustCompile(`\^C`))
		term.expect(prompt)
		if out := e.tmsh("list ltm pool p1 one-line"); !strings.Contains(out, "ltm pool p1") {
			t.Errorf("the cancelled delete ran:\n%s", out)
		}
		term.send("show sys failover\r")
		term.expect(regexp.MustCompile(`Sys::Failover`))
		term.expect(prompt)

		// A refused command prints its error and leaves the user at the prompt.
		term.send("frobnicate\r")
		term.expect(regexp.MustCompile(`Syntax Error: "frobnicate" unknown command`))
		term.expect(prompt)

		t.Run("tab completion and ? help", func(t *testing.T) {
			// Tab completes a component, then an object name asked of the daemon live.
			term.send("list ltm po\t")
			term.expect(regexp.MustCompile(`list ltm pool `))
			term.send("p\t")
			term.expect(regexp.MustCompile(`list ltm pool p1 `))
			term.send("\r")
			term.expect(regexp.MustCompile(`ltm pool p1 \{`))
			term.expect(prompt)
			// ? lists what may come next, with a line of help each, and gives the line back.
			term.send("list ltm ?")
			term.expect(regexp.MustCompile(`pool\s+pools: `))
			term.expect(regexp.MustCompile(`virtual\s+virtual servers: `))
			term.expect(regexp.MustCompile(`# list ltm `))
			term.send("\x03")
			term.expect(prompt)
		})

		term.send("quit\r")
		if code := term.wait(15 * time.Second); code != 0 {
			t.Errorf("ssh after quit: exit %d\n%s", code, term.output())
		}
	})

	t.Run("guest interactive", func(t *testing.T) {
		term := e.login(t, alice)
		prompt := regexp.MustCompile(`\[alice@lb1:[A-Za-z]+:[A-Za-z ]+\] ~ # `)
		term.expect(prompt)
		term.send("delete ltm pool p1\r")
		term.expect(regexp.MustCompile(`01070822:3: Access Denied: User \(alice\) with role \(guest\) may not run \(delete ltm pool p1\)`))
		term.expect(prompt)
		term.send("quit\r")
		if code := term.wait(15 * time.Second); code != 0 {
			t.Errorf("ssh after quit: exit %d\n%s", code, term.output())
		}
		if out := e.tmsh("list ltm pool p1 one-line"); !strings.Contains(out, "ltm pool p1") {
			t.Errorf("the guest's refused delete ran:\n%s", out)
		}
	})
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// newEnv builds the namespaces, the accounts, the keys and the configuration files; every
// one of them is removed in t.Cleanup, failure or not.
func newEnv(t *testing.T) *env {
	t.Helper()
	// The daemon listens on the default socket inside the test's /run, so that tmsh, run by
	// sshd as a login shell with no flags, proves it finds the daemon by default.
	if !strings.HasPrefix(api.DefaultSocket, "/run/") {
		t.Fatalf("api.DefaultSocket %s is not under /run, which the test replaces", api.DefaultSocket)
	}
	dir := t.TempDir()
	// The test users read their authorized keys (sshd opens them as the user) and own
	// their homes under dir: let them through the folders above it.
	for _, d := range []string{filepath.Dir(dir), dir} {
		must(t, os.Chmod(d, 0o755))
	}
	id := strconv.Itoa(os.Getpid())
	e := &env{t: t, dir: dir, lbNS: "sshe2e-lb-" + id, clientNS: "sshe2e-cl-" + id,
		socket: filepath.Join(dir, "run", strings.TrimPrefix(api.DefaultSocket, "/run/"))}
	e.makeNamespaces()
	e.writeAccounts()
	e.writeKeys()
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) run(name string, args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (e *env) makeNamespaces() {
	t := e.t
	for _, ns := range []string{e.lbNS, e.clientNS} {
		e.run("ip", "netns", "add", ns)
		t.Cleanup(func() { removeNamespace(t, ns) })
		e.run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	e.run("ip", "link", "add", "mgmt", "netns", e.lbNS, "type", "veth", "peer", "name", "eth0", "netns", e.clientNS)
	e.run("ip", "-n", e.lbNS, "addr", "add", mgmtAddr+"/24", "dev", "mgmt")
	e.run("ip", "-n", e.lbNS, "link", "set", "mgmt", "up")
	e.run("ip", "-n", e.clientNS, "addr", "add", clientAddr+"/24", "dev", "eth0")
	e.run("ip", "-n", e.clientNS, "link", "set", "eth0", "up")
}

// removeNamespace ends every process left in ns (sshd's session children, a tmsh) by pid,
// then deletes it. Each of those processes was started by this test, directly or by sshd.
func removeNamespace(t *testing.T, ns string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		pids := strings.Fields(string(out))
		if err != nil || len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("namespace %s: processes %v still running", ns, pids)
			break
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
		t.Errorf("delete namespace %s: %v: %s", ns, err, out)
	}
}

// writeAccounts writes the passwd, group and shadow files that the namespaced processes
// see: the host's entries (root, sshd's privilege separation user) less any that clash
// with the test's, plus the test accounts, whose login shell is the tmsh under test.
func (e *env) writeAccounts() {
	t := e.t
	accounts := []account{admin, alice, mallory}
	names := map[string]bool{tmshGroup: true}
	ids := map[string]bool{strconv.Itoa(tmshGID): true}
	for _, a := range accounts {
		names[a.name], ids[strconv.Itoa(a.uid)] = true, true
	}
	keep := func(path string) string {
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return ""
		}
		must(t, err)
		var b strings.Builder
		for _, line := range strings.SplitAfter(string(data), "\n") {
			f := strings.Split(line, ":")
			if line == "" || names[f[0]] || (len(f) > 2 && ids[f[2]]) {
				continue
			}
			b.WriteString(line)
			if !strings.HasSuffix(line, "\n") {
				b.WriteString("\n")
			}
		}
		return b.String()
	}
	passwd, group, shadow := keep("/etc/passwd"), keep("/etc/group"), keep("/etc/shadow")
	var members []string
	for _, a := range accounts {
		home := filepath.Join(e.dir, "home", a.name)
		must(t, os.MkdirAll(home, 0o755))
		must(t, os.Chown(home, a.uid, tmshGID))
		passwd += fmt.Sprintf("%s:x:%d:%d:test %s:%s:%s\n", a.name, a.uid, tmshGID, a.name, home, binPath("tmsh"))
		shadow += a.name + ":*:20000:0:99999:7:::\n"
		members = append(members, a.name)
	}
	group += fmt.Sprintf("%s:x:%d:%s\n", tmshGroup, tmshGID, strings.Join(members, ","))
	for _, d := range []string{"etc", "log", "run/sshd"} {
		must(t, os.MkdirAll(filepath.Join(e.dir, d), 0o755))
	}
	must(t, os.Chmod(filepath.Join(e.dir, "run"), 0o755))
	must(t, os.WriteFile(filepath.Join(e.dir, "etc/passwd"), []byte(passwd), 0o644))
	must(t, os.WriteFile(filepath.Join(e.dir, "etc/group"), []byte(group), 0o644))
	must(t, os.WriteFile(filepath.Join(e.dir, "etc/shadow"), []byte(shadow), 0o640))
	for _, f := range []string{"wtmp", "btmp", "lastlog"} {
		must(t, os.WriteFile(filepath.Join(e.dir, "log", f), nil, 0o644))
	}
}

// writeKeys makes the host key, the client key, known_hosts, each account's authorized
// keys, and the client's ssh_config (-F: ssh then reads nothing of root's ~/.ssh).
func (e *env) writeKeys() {
	t := e.t
	for _, d := range []string{"ssh/authorized_keys", "client"} {
		must(t, os.MkdirAll(filepath.Join(e.dir, d), 0o755))
	}
	hostKey := filepath.Join(e.dir, "ssh", "host_ed25519")
	clientKey := filepath.Join(e.dir, "client", "id_ed25519")
	e.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "appliance-e2e-host", "-f", hostKey)
	e.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "appliance-e2e-client", "-f", clientKey)
	hostPub, err := os.ReadFile(hostKey + ".pub")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(e.dir, "client", "known_hosts"), []byte(mgmtAddr+" "+string(hostPub)), 0o644))
	clientPub, err := os.ReadFile(clientKey + ".pub")
	must(t, err)
	for _, a := range []account{admin, alice, mallory} {
		must(t, os.WriteFile(filepath.Join(e.dir, "ssh", "authorized_keys", a.name), clientPub, 0o644))
	}
	client := fmt.Sprintf(`Host appliance
	HostName %s
	Port 22
	IdentityFile %s
	IdentitiesOnly yes
	UserKnownHostsFile %s
	GlobalKnownHostsFile /dev/null
	StrictHostKeyChecking yes
	UpdateHostKeys no
	BatchMode yes
	ConnectTimeout 15
	ServerAliveInterval 5
	ServerAliveCountMax 3
	LogLevel ERROR
`, mgmtAddr, clientKey, filepath.Join(e.dir, "client", "known_hosts"))
	must(t, os.WriteFile(filepath.Join(e.dir, "client", "ssh_config"), []byte(client), 0o644))
	// The shipped drop-in comes first, as Debian's sshd_config includes it first.
	server := fmt.Sprintf(`Include %s
ListenAddress %s:22
HostKey %s
PidFile %s
AuthorizedKeysFile %s/%%u
# The test's folders are under /tmp, which is world-writable: StrictModes would refuse them.
StrictModes no
UsePAM no
PubkeyAuthentication yes
PermitRootLogin no
PrintLastLog no
LogLevel VERBOSE
`, filepath.Join(moduleRoot, "etc/ssh/sshd_config.d/appliance.conf"), mgmtAddr, hostKey,
		filepath.Join(e.dir, "ssh", "sshd.pid"), filepath.Join(e.dir, "ssh", "authorized_keys"))
	must(t, os.WriteFile(filepath.Join(e.dir, "ssh", "sshd_config"), []byte(server), 0o644))
}

// inside returns a command for the appliance's namespaces (see insideScript).
func (e *env) inside(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--net=/run/netns/" + e.lbNS, "--", "unshare", "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", insideScript, "sh", e.dir}, args...)
	return exec.CommandContext(ctx, "nsenter", full...)
}

// startProcess starts cmd with its output in logName under dir, and stops it in t.Cleanup
// (SIGTERM, then SIGKILL after 5s), printing the log if the test failed.
func (e *env) startProcess(name, logName string, cmd *exec.Cmd) (done <-chan struct{}) {
	t := e.t
	logPath := filepath.Join(e.dir, logName)
	logf, err := os.Create(logPath)
	must(t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, out)
		}
	})
	return exited
}

func (e *env) startDaemon() {
	t := e.t
	must(t, os.MkdirAll(filepath.Join(e.dir, "lb1"), 0o700))
	cmd := e.inside(context.Background(), binPath("applianced"), "--name", "lb1",
		"--config", filepath.Join(e.dir, "lb1", "lb1.toml"),
		"--socket", api.DefaultSocket, "--socket-group", tmshGroup)
	exited := e.startProcess("applianced", "applianced.log", cmd)
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := e.tmshErr("show sys failover")
		if err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatal("applianced exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("applianced: control socket not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fi, err := os.Stat(e.socket)
	must(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Gid != tmshGID {
		t.Errorf("control socket mode %v gid %d, want 0660 and group %s (%d)", fi.Mode().Perm(), st.Gid, tmshGroup, tmshGID)
	}
}

func (e *env) startSSHD() {
	t := e.t
	config := filepath.Join(e.dir, "ssh", "sshd_config")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if out, err := e.inside(ctx, "/usr/sbin/sshd", "-t", "-f", config).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t: %v\n%s", err, out)
	}
	exited := e.startProcess("sshd", "sshd.log", e.inside(context.Background(), "/usr/sbin/sshd", "-D", "-e", "-f", config))
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := labnet.Do(e.clientNS, func() error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(mgmtAddr, "22"), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatal("sshd exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd not listening on %s:22: %v", mgmtAddr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tmsh runs commands as root on the box, straight on the socket.
func (e *env) tmsh(commands string) string {
	e.t.Helper()
	out, err := e.tmshErr(commands)
	if err != nil {
		e.t.Fatalf("tmsh -c %q: %v\n%s", commands, err, out)
	}
	return out
}

func (e *env) tmshErr(commands string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binPath("tmsh"), "--socket", e.socket, "-c", commands).CombinedOutput()
	return string(out), err
}

// sshCommand is ssh from the client's namespace with the test's own client config.
func (e *env) sshCommand(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--net=/run/netns/" + e.clientNS, "--", "ssh", "-F", filepath.Join(e.dir, "client", "ssh_config")}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + filepath.Join(e.dir, "client"), "TERM=xterm"}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// ssh runs one command as user, as `ssh user@appliance 'COMMAND'` does.
func (e *env) ssh(t *testing.T, user account, command string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := e.sshCommand(ctx, user.name+"@appliance", command)
	var o, s bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &s
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("ssh %s: %v", command, err)
	}
	if code == 255 {
		t.Fatalf("ssh itself failed (exit 255):\n%s", s.String())
	}
	return o.String(), s.String(), code
}

// terminal is an interactive ssh session on a pseudo-terminal.
type terminal struct {
	t      *testing.T
	pty    *os.File
	cmd    *exec.Cmd
	mu     sync.Mutex
	buf    bytes.Buffer // everything the session printed
	mark   int          // where the next expect starts, in the cleaned text
	exited chan struct{}
	code   int
}

// login starts `ssh -tt user@appliance` on a pty; t.Cleanup ends it.
func (e *env) login(t *testing.T, user account) *terminal {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := e.sshCommand(ctx, "-tt", user.name+"@appliance")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 50, Cols: 200})
	if err != nil {
		cancel()
		t.Fatalf("ssh -tt: %v", err)
	}
	term := &terminal{t: t, pty: ptmx, cmd: cmd, exited: make(chan struct{})}
	readerDone := make(chan struct{})
	go func() { // ends when the pty closes
		defer close(readerDone)
		b := make([]byte, 4096)
		for {
			n, err := ptmx.Read(b)
			term.mu.Lock()
			term.buf.Write(b[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			term.code = exit.ExitCode()
		} else if err != nil {
			term.code = -1
		}
		close(term.exited)
	}()
	t.Cleanup(func() {
		cancel() // kills ssh if it is still running
		<-term.exited
		ptmx.Close()
		<-readerDone
		if t.Failed() {
			t.Logf("terminal:\n%s", term.output())
		}
	})
	return term
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\r`)

// output is what the terminal showed, without escape sequences and carriage returns.
func (term *terminal) output() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return ansi.ReplaceAllString(term.buf.String(), "")
}

func (term *terminal) send(s string) {
	term.t.Helper()
	if _, err := term.pty.Write([]byte(s)); err != nil {
		term.t.Fatalf("write %q to the terminal: %v", s, err)
	}
}

// expect waits (20s at most: CI machines can be busy) for re in what the terminal printed
// since the last match.
func (term *terminal) expect(re *regexp.Regexp) {
	term.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := term.output()
		if loc := re.FindStringIndex(out[term.mark:]); loc != nil {
			term.t.Logf("terminal: saw %q", out[term.mark+loc[0]:term.mark+loc[1]])
			term.mark += loc[1]
			return
		}
		if time.Now().After(deadline) {
			term.t.Fatalf("terminal: no %q within 20s; since the last match:\n%s", re, out[term.mark:])
		}
		select {
		case <-term.exited:
			if out := term.output(); re.FindStringIndex(out[term.mark:]) == nil {
				term.t.Fatalf("terminal: ssh exited (%d) before %q; since the last match:\n%s", term.code, re, out[term.mark:])
			}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// wait returns ssh's exit status once it exits, failing the test after timeout.
func (term *terminal) wait(timeout time.Duration) int {
	term.t.Helper()
	select {
	case <-term.exited:
		return term.code
	case <-time.After(timeout):
		term.t.Fatalf("ssh did not exit within %v", timeout)
		return -1
	}
}
