// Command lab runs the two-appliance lab of the README (make lab): it builds the
// namespaces, starts and configures both daemons, and starts echo servers on the pool
// members. Its other subcommands start traffic, fail a device, and tear the lab down.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/openappliance/appliance/tests/bench"
	"github.com/openappliance/appliance/tests/labnet"
)

const prefix = "lab"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", "/run/appliance-lab", "folder for the daemons' config, sockets, logs and pids")
	bin := fs.String("bin", defaultBin(), "folder holding applianced, tmsh and lab")
	listen := fs.String("listen", "", "echo: comma-separated addresses to listen on")
	target := fs.String("target", net.JoinHostPort(labnet.VirtualIP, strconv.Itoa(labnet.VirtualPort)), "client: the virtual server")
	conns := fs.Int("conns", 10, "client: long-lived connections to open")
	rate := fs.Int("rate", 10000, "feed: entries a second (0: as fast as one netlink socket goes)")
	dur := fs.Duration("dur", 10*time.Second, "feed: how long")
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "up":
		err = up(*dir, *bin)
	case "down":
		err = down(*dir, *bin)
	case "echo":
		err = echo(strings.Split(*listen, ","))
	case "client":
		err = client(*target, *conns)
	case "fail":
		err = fail(*dir, *bin, fs.Arg(0))
	case "restart":
		err = restart(*dir, *bin, fs.Arg(0))
	case "feed":
		name := fs.Arg(0)
		if fs.NArg() > 0 {
			fs.Parse(fs.Args()[1:]) // the flags after the device's name
		}
		err = feed(name, *rate, *dur)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: lab up|down [-dir DIR] [-bin BIN]
       lab client [-conns N]      (run inside the client namespace: ip netns exec lab-cl ...)
       lab fail lb1|lb2           (links down + SIGKILL of the daemon)
       lab restart lb1|lb2        (links up, daemon started again)
       lab feed lb1|lb2 [-rate N] [-dur D]
                                  (established entries of the virtual created in the
                                   device's kernel, each living 1 s: the mirror's load
                                   without a traffic generator)
       lab echo -listen ADDR,...  (the echo servers; started by up)`)
	os.Exit(2)
}

func defaultBin() string {
	exe, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(exe)
}

func up(dir, bin string) error {
	if _, err := os.Stat("/run/netns/" + prefix + "-sw"); err == nil {
		return errors.New("a lab is already up: run make lab-down first")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	l, err := labnet.New(prefix, dir, bin)
	if err != nil {
		return err
	}
	for _, d := range l.Devices {
		pid, err := l.StartDetached(d)
		if err != nil {
			return err
		}
		writePid(dir, d.Name, pid)
	}
	for _, d := range l.Devices {
		if _, err := l.Tmsh(d, l.DeviceCommands(d)); err != nil {
			return err
		}
	}
	if _, err := l.Tmsh(l.Devices[0], labnet.TrafficCommands()+"; save sys config; run cm config-sync to-group dg1"); err != nil {
		return err
	}
	var addrs []string
	for _, m := range labnet.Members {
		addrs = append(addrs, net.JoinHostPort(m, strconv.Itoa(labnet.VirtualPort)))
	}
	cmd := exec.Command("ip", "netns", "exec", l.Server, filepath.Join(bin, "lab"), "echo", "-listen", strings.Join(addrs, ","))
	logf, err := os.Create(filepath.Join(dir, "echo.log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start echo servers: %w", err)
	}
	writePid(dir, "echo", cmd.Process.Pid)
	cmd.Process.Release()
	fmt.Printf("lab is up: namespaces %s; files in %s\n", strings.Join(l.Namespaces(), " "), dir)
	return nil
}

func writePid(dir, name string, pid int) {
	os.WriteFile(filepath.Join(dir, name+".pid"), []byte(strconv.Itoa(pid)), 0o644)
}

func killPid(dir, name string) {
	data, err := os.ReadFile(filepath.Join(dir, name+".pid"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	os.Remove(filepath.Join(dir, name+".pid"))
}

func down(dir, bin string) error {
	for _, name := range []string{"lb1", "lb2", "echo"} {
		killPid(dir, name)
	}
	err := labnet.Attach(prefix, dir, bin).Close()
	os.RemoveAll(dir)
	return err
}

func fail(dir, bin, name string) error {
	l := labnet.Attach(prefix, dir, bin)
	d := l.Device(name)
	if d == nil {
		return fmt.Errorf("no device %q (lb1 or lb2)", name)
	}
	if err := l.SetLinks(d, false); err != nil {
		return err
	}
	killPid(dir, name)
	fmt.Printf("%s: links down, daemon killed\n", name)
	return nil
}

func restart(dir, bin, name string) error {
	l := labnet.Attach(prefix, dir, bin)
	d := l.Device(name)
	if d == nil {
		return fmt.Errorf("no device %q (lb1 or lb2)", name)
	}
	killPid(dir, name)
	if err := l.SetLinks(d, true); err != nil {
		return err
	}
	pid, err := l.StartDetached(d)
	if err != nil {
		return err
	}
	writePid(dir, name, pid)
	fmt.Printf("%s: links up, daemon started (pid %d)\n", name, pid)
	return nil
}

func feed(name string, rate int, dur time.Duration) error {
	if name != "lb1" && name != "lb2" {
		usage()
	}
	done, failed, took := bench.FeedKernel(context.Background(), prefix+"-"+name, 0, rate, dur)
	fmt.Printf("%s: %d entries created in %v (%.0f/s), %d failed\n", name, done, took.Round(time.Millisecond), float64(done)/took.Seconds(), failed)
	return nil
}

func echo(addrs []string) error {
	srv, err := labnet.ListenEcho(addrs, func(a string) (net.Listener, error) { return net.Listen("tcp", a) })
	if err != nil {
		return err
	}
	defer srv.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}

// client opens long-lived connections and prints, every second, how many are alive and
// how many bytes came back; it stops at Ctrl-C.
func client(target string, n int) error {
	flows, err := labnet.Dial(n, func() (net.Conn, error) { return net.DialTimeout("tcp", target, 5*time.Second) })
	if err != nil {
		return err
	}
	for _, f := range flows {
		f.Start(64, 10*time.Millisecond)
	}
	defer func() {
		for _, f := range flows {
			f.Close()
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		alive, echoed := 0, int64(0)
		for _, f := range flows {
			if f.Err() == nil {
				alive++
			}
			echoed += f.Read()
		}
		line := fmt.Sprintf("%s  connections alive %d/%d  bytes echoed %d", time.Now().Format("15:04:05"), alive, n, echoed)
		for _, f := range flows {
			if err := f.Err(); err != nil {
				line += "  first error: " + err.Error()
				break
			}
		}
		fmt.Println(line)
	}
}
