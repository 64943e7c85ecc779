#!/bin/sh
# mkimage.sh TAG [KEY=VALUE...] — build a Debian bookworm image for the
# deploy test with debootstrap and `docker import` (the Docker engine here has no registry
# to pull from). The mirror is the first one in this machine's apt sources.
# The image carries what a freshly provisioned host would: systemd, sshd,
# python3 for Ansible, and redis-server from Debian's package (preinstalled
# so the play needs no network: the role's apt task finds it present).
# Each KEY=VALUE becomes a label of the image (the deploy test labels what
# it makes, to find and remove it).
set -eu
PATH=$PATH:/usr/sbin:/sbin
tag=${1:?usage: mkimage.sh TAG [KEY=VALUE...]}
shift
# "$@" becomes the --change options of docker import, one per label.
n=$#
for kv in "$@"; do
	case $kv in
	?*=*) set -- "$@" --change "LABEL $kv" ;;
	*) echo "mkimage.sh: label $kv: want KEY=VALUE" >&2; exit 2 ;;
	esac
done
shift "$n"

mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
	awk '{print $2}' | grep -v security | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /tmp/shoal-rootfs.XXXXXX)
trap 'rm -rf "$root" "$root.log"' EXIT
trap 'exit 1' INT TERM HUP

debootstrap --variant=minbase \
	--include=systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,sudo,redis-server,curl,ca-certificates,iproute2,procps,netbase \
	bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# No service starts while the image is built, and the units that make no
# sense in a container stay masked.
for u in getty.target systemd-udevd.service systemd-udev-trigger.service \
	systemd-networkd-wait-online.service systemd-timesyncd.service \
	systemd-resolved.service console-getty.service; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done
# Debian starts redis-server at boot; the role decides, not the image.
rm -f "$root"/etc/systemd/system/multi-user.target.wants/redis-server.service
chroot "$root" update-rc.d -f redis-server remove >/dev/null 2>&1 || true
# Host keys are made when the container first starts, so that images
# built twice do not share them: by this unit under systemd, by the
# container's command without it (see sshd-only in the test).
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Make the SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
UNIT
mkdir -p "$root/etc/systemd/system/ssh.service.requires"
ln -sf ../ssh-hostkeys.service "$root/etc/systemd/system/ssh.service.requires/ssh-hostkeys.service"
mkdir -p "$root/run/sshd" "$root/root/.ssh"
chmod 700 "$root/root/.ssh"
echo 'PermitRootLogin prohibit-password' >"$root/etc/ssh/sshd_config.d/shoal-test.conf"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | docker import \
	--change 'CMD ["/sbin/init"]' "$@" \
	--message "shoal deploy test host (debootstrap bookworm from $mirror)" \
	- "$tag" >/dev/null
echo "$tag"
