// Command bench compares the appliance's connection mirroring and failover with the
// standard Linux pair (conntrackd FTFW + keepalived), each in its own two-appliance lab in
// network namespaces, and prints one table: each figure ours beside theirs with the ratio.
// It needs root, conntrackd, keepalived, conntrack and nft; see the README (make bench).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/openappliance/appliance/tests/bench"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == bench.EchoCommand {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if err := bench.ServeEcho(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	bin := flag.String("bin", "", "folder holding applianced and tmsh (default: build them into bin/ of the module)")
	runs := flag.Int("runs", 5, "runs per figure (the full syncs and bursts cap it at 2-3)")
	quick := flag.Bool("quick", false, "1-2 runs and smaller N: a few minutes")
	results := flag.String("results", "", "also write the table to this file (default: BIN/bench-results.txt)")
	only := flag.String("only", "", "comma-separated sections: failover,kept,rate,feed,steady,sync (default: all)")
	systems := flag.String("systems", "ours,theirs", "comma-separated: ours,theirs")
	workDir := flag.String("dir", "", "work folder for the labs' configs and logs (default: a temporary folder, removed at the end)")
	keep := flag.Bool("keep", false, "keep the work folder (logs) at the end")
	dropInvalid := flag.Bool("theirs-drop-invalid", false, "variant: theirs also drops packets in conntrack state INVALID on input (not the same rules as ours)")
	flag.Parse()

	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	sysList := splitList(*systems)
	need := []string{"ip", "nft", "conntrack", "chrt"}
	for _, s := range sysList {
		if s == "theirs" {
			need = append(need, "conntrackd", "keepalived")
		} else if s != "ours" {
			return fmt.Errorf("-systems: unknown system %q", s)
		}
	}
	for _, tool := range need {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install -y iproute2 nftables conntrack conntrackd keepalived util-linux)", tool)
		}
	}
	sections := map[string]bool{}
	for _, s := range splitList(*only) {
		switch s {
		case "failover", "kept", "rate", "feed", "steady", "sync":
			sections[s] = true
		default:
			return fmt.Errorf("-only: unknown section %q", s)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	signal.Ignore(syscall.SIGPIPE) // a closed pipe on stdout must not skip the cleanup

	unlock, err := lock("/run/appliance-bench.lock")
	if err != nil {
		return err
	}
	defer unlock()
	if old, err := bench.RestoreConntrackMax(); err != nil {
		return fmt.Errorf("put back the conntrack limits a previous run raised: %w", err)
	} else if old != "" {
		fmt.Fprintf(os.Stderr, "put back %s, which a previous run left raised\n", old)
	}
	if removed, err := bench.CleanupStale(bench.OursPrefix, bench.TheirsPrefix, bench.CeilingPrefix); err != nil {
		return fmt.Errorf("remove a previous run's namespaces: %w", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "removed namespaces a previous run left: %s\n", strings.Join(removed, " "))
	}

	if *bin == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		*bin = filepath.Join(root, "bin")
		for _, step := range []struct {
			env  string
			args []string
		}{
			{"", []string{"build", "-o", *bin + "/", "./appliance/cmd/applianced"}},
			{"CGO_ENABLED=0", []string{"build", "-o", *bin + "/", "./shell/cmd/tmsh"}}, // static, as make builds it
			{"", []string{"test", "-c", "-o", filepath.Join(*bin, bench.CeilingTest), "./appliance/daemon"}},
		} {
			args := step.args
			cmd := exec.CommandContext(ctx, "go", args...)
			cmd.Dir = root
			if step.env != "" {
				cmd.Env = append(os.Environ(), step.env)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go %s: %w\n%s", args[0], err, out)
			}
		}
	}
	if *bin, err = filepath.Abs(*bin); err != nil {
		return err
	}
	for _, b := range []string{"applianced", "tmsh"} {
		if _, err := os.Stat(filepath.Join(*bin, b)); err != nil {
			return fmt.Errorf("-bin %s: %w", *bin, err)
		}
	}
	if *results == "" {
		*results = filepath.Join(*bin, "bench-results.txt")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir := *workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "appliance-bench-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	} else {
		defer fmt.Fprintf(os.Stderr, "logs kept in %s\n", dir)
	}

	cfg := bench.Config{Bin: *bin, Exe: exe, Dir: dir, Runs: *runs, Quick: *quick, Sections: sections, Systems: sysList, TheirsDropInvalid: *dropInvalid, Log: os.Stderr}
	plan := bench.MakePlan(cfg)
	if len(sections) == 0 || sections["sync"] {
		largest := plan.SyncN[len(plan.SyncN)-1]
		restore, err := bench.RaiseConntrackMax(largest + largest/2 + 100000)
		if err != nil {
			return err
		}
		defer restore()
	}
	// The harness holds the client ends of the 10,000 connections; the echo servers run as
	// a process of their own.
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}

	start := time.Now()
	res, runErr := bench.Run(ctx, cfg)
	title := fmt.Sprintf("appliance bench, %s: ours = applianced (bin %s), theirs = conntrackd FTFW + keepalived VRRPv3 with primary-backup.sh;\n"+
		"same nftables NAT rules (kernel/nft) and sysctls on both; %d runs per figure (quick=%v), median [min–max]; %s; took %v",
		time.Now().Format("2006-01-02 15:04"), *bin, *runs, *quick, bench.Describe(context.Background()), time.Since(start).Round(time.Second))
	if *dropInvalid {
		title += "\nVARIANT: theirs also drops conntrack state INVALID on input (ours does not): not like for like"
	}
	if runErr != nil {
		title += "\nINTERRUPTED: " + runErr.Error() + " (the figures so far)"
	}
	table := bench.FormatTable(title, res.Rows(plan))
	fmt.Print(table)
	if err := os.MkdirAll(filepath.Dir(*results), 0o755); err == nil {
		if err := os.WriteFile(*results, []byte(table), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "write results:", err)
		} else {
			fmt.Fprintf(os.Stderr, "results written to %s\n", *results)
		}
	}
	return runErr
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// lock takes an exclusive lock, so that two bench runs never share namespaces.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another bench run holds %s", path)
	}
	return func() { f.Close() }, nil
}

// moduleRoot finds the folder holding go.mod, from the working folder up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working folder: run from the module or give -bin")
		}
		dir = parent
	}
}
