# The README's two set-up commands are `make lab` and `make test`; both build first.
GO      ?= go
BIN     := bin
LABDIR  := /run/appliance-lab
export PATH := $(PATH):/usr/local/go/bin

.PHONY: build test test-unit lab lab-down bench bench-quick clean install

# tmsh, every SSH login's shell, is linked statically: without the dynamic loader and libc it
# starts in about 3 ms instead of 4 and maps 6 MB instead of 8. applianced keeps cgo, for
# os/user's lookups through NSS (users from LDAP, say).
build:
	$(GO) build -o $(BIN)/ ./appliance/cmd/applianced ./tests/cmd/lab
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./shell/cmd/tmsh

# Every test: unit tests and the privileged kernel and end-to-end tests (run as root).
test: build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# The tests that need neither root nor the kernel.
test-unit:
	$(GO) test -count=1 -short ./appliance/... ./ha/... ./shell/...

# The two-appliance lab of the README; leaves you at lb1's tmsh.
lab: build
	$(BIN)/lab up -dir $(LABDIR) -bin $(BIN)
	@echo "lb2's shell:   ip netns exec lab-lb2 $(BIN)/tmsh --socket $(LABDIR)/lb2.sock"
	@echo "traffic:       ip netns exec lab-cl $(BIN)/lab client -conns 20"
	@echo "fail lb1:      $(BIN)/lab fail lb1    (and back: $(BIN)/lab restart lb1)"
	@echo "mirror load:   $(BIN)/lab feed lb1 -rate 10000 -dur 10s"
	@echo "tear it down:  make lab-down"
	$(BIN)/tmsh --socket $(LABDIR)/lb1.sock

lab-down:
	@test -x $(BIN)/lab || $(GO) build -o $(BIN)/ ./tests/cmd/lab
	$(BIN)/lab down -dir $(LABDIR) -bin $(BIN)

# Ours beside conntrackd (FTFW) + keepalived (VRRP) on the same lab; not part of make test.
# Installs conntrackd and keepalived if missing; prints the table and writes bin/bench-results.txt.
bench: build
	@command -v conntrackd >/dev/null && command -v keepalived >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y conntrackd keepalived)
	$(GO) build -o $(BIN)/ ./tests/cmd/bench
	$(GO) test -c -o $(BIN)/daemon.test ./appliance/daemon
	$(BIN)/bench -bin $(BIN) -results $(BIN)/bench-results.txt $(BENCHFLAGS)

bench-quick: build
	@command -v conntrackd >/dev/null && command -v keepalived >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y conntrackd keepalived)
	$(GO) build -o $(BIN)/ ./tests/cmd/bench
	$(GO) test -c -o $(BIN)/daemon.test ./appliance/daemon
	$(BIN)/bench -bin $(BIN) -quick -results $(BIN)/bench-results.txt

# Install on this host (root): binaries, systemd unit (watchdog), sshd drop-in, the admin
# account with tmsh as its login shell. ADMIN_KEY=FILE.pub adds admin's SSH key.
install: build
	BIN=$(BIN) sh etc/install.sh

clean:
	rm -rf $(BIN)
