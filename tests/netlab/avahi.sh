#!/bin/sh
# Run COMMAND next to a private avahi-daemon and D-Bus system bus (for tests/netlab).
#
#     ip netns exec NS sh avahi.sh WORKDIR IFACE COMMAND [ARG ...]
#
# Only inside a network namespace the test created, and only as root. `ip netns exec`
# gives us a mount namespace of our own, so a tmpfs over /run hides the host's /run:
# avahi's pid file and sockets never touch the host. The bus socket and the
# configuration files live in WORKDIR. COMMAND runs with DBUS_SYSTEM_BUS_ADDRESS set
# once avahi answers; the daemons stop when it ends.
set -eu
work=$1 iface=$2
shift 2
mount -t tmpfs sidedoor-netlab /run
mkdir -p /run/avahi-daemon /run/dbus
export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$work/bus"

cat >"$work/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>$DBUS_SYSTEM_BUS_ADDRESS</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_type="*"/>
  </policy>
</busconfig>
CONF
cat >"$work/avahi.conf" <<CONF
[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=$iface
enable-dbus=yes
disallow-other-stacks=no
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
CONF

dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile >"$work/dbus.log" 2>&1 &
bus=$!
trap 'kill $bus ${avahi:-} 2>/dev/null || true; wait' EXIT
i=0
until [ -S "$work/bus" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "no D-Bus" >&2; exit 2; }; sleep 0.05
done
avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$work/avahi.conf" \
    >"$work/avahi.log" 2>&1 &
avahi=$!
i=0
until timeout 2 avahi-browse --all --terminate >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 50 ] || { echo "no avahi" >&2; cat "$work/avahi.log" >&2; exit 2; }
    sleep 0.1
done
"$@"
