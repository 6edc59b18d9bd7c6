#!/bin/sh
# Installs the appliance on this host (as root, after `make build`): the binaries, the
# systemd unit, the sshd drop-in, the group whose members may use tmsh, and the admin
# account whose login shell is tmsh. Run again to upgrade: every step is idempotent.
#
#   ADMIN_KEY=~/.ssh/id_ed25519.pub sh etc/install.sh     (or: make install)
#
# Variables: BIN (where make build put the binaries, default bin), PREFIX (default
# /usr/local), ADMIN_KEY (a public key file appended to admin's authorized_keys),
# DESTDIR (stage the files under a folder: no accounts, no services; for packaging).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
GROUP=appliance
ADMIN=admin
TMSH=$PREFIX/bin/tmsh

for f in "$BIN/applianced" "$BIN/tmsh"; do
	[ -x "$f" ] || { echo "install: $f is missing: run make build first" >&2; exit 1; }
done

install -D -m 0755 "$BIN/applianced" "$DESTDIR$PREFIX/sbin/applianced"
install -D -m 0755 "$BIN/tmsh" "$DESTDIR$TMSH"
install -d -m 0750 "$DESTDIR/etc/appliance"
install -D -m 0644 etc/ssh/sshd_config.d/appliance.conf "$DESTDIR/etc/ssh/sshd_config.d/appliance.conf"
install -d -m 0755 "$DESTDIR/etc/systemd/system"
sed "s|/usr/local/|$PREFIX/|g" etc/systemd/system/applianced.service >"$DESTDIR/etc/systemd/system/applianced.service"
chmod 0644 "$DESTDIR/etc/systemd/system/applianced.service"
install -D -m 0644 README.md "$DESTDIR$PREFIX/share/doc/appliance/README.md"

if [ -n "$DESTDIR" ]; then
	echo "staged under $DESTDIR; accounts and services are left to the target's install"
	exit 0
fi

# tmsh is a login shell: chsh and some PAM stacks (pam_shells) want it listed.
grep -qxF "$TMSH" /etc/shells || echo "$TMSH" >>/etc/shells
getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
if id "$ADMIN" >/dev/null 2>&1; then
	usermod --shell "$TMSH" --append --groups "$GROUP" "$ADMIN"
else
	useradd --create-home --shell "$TMSH" --groups "$GROUP" "$ADMIN"
fi
if [ -n "${ADMIN_KEY:-}" ]; then
	home=$(getent passwd "$ADMIN" | cut -d: -f6)
	install -d -m 0700 -o "$ADMIN" -g "$ADMIN" "$home/.ssh"
	keys=$home/.ssh/authorized_keys
	touch "$keys"
	grep -qxF "$(cat "$ADMIN_KEY")" "$keys" || cat "$ADMIN_KEY" >>"$keys"
	chown "$ADMIN:$ADMIN" "$keys"
	chmod 0600 "$keys"
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	systemctl enable --now applianced.service
	systemctl reload-or-restart ssh.service
	echo "installed: ssh $ADMIN@<management address> lands at the tmsh prompt"
else
	echo "installed; systemd is not running here: start $PREFIX/sbin/applianced --socket-group $GROUP and sshd yourself"
fi
