#!/bin/sh
# Prepare a Debian 12 host (as root) for `make run` and `make test`. Idempotent: on a host that
# is already set up it installs nothing and prints one line.
#
#   containerd, runc, CNI plugins    the runtime and pod network the agent drives
#   busybox-static, gcc, libc6-dev   inputs of the local busybox and pause images
#   iptables, nftables, conntrack,   what the proxy (in either mode) and the test harness call
#   iproute2
#   docker.io                        the Docker backend (dockerd is started by hand, not here)
#   vagrant                          `vagrant validate` of the Vagrant lab (no provider: no VMs)
#   docker-registry, skopeo,         a real private registry for the image tests (htpasswd auth)
#   apache2-utils
#
# Environment: PYTHON (default python3) is the interpreter to install nodeagent into.
set -eu

PYTHON=${PYTHON:-python3}
PACKAGES="containerd runc containernetworking-plugins busybox-static iptables nftables
conntrack iproute2 docker.io gcc libc6-dev make util-linux vagrant
docker-registry skopeo apache2-utils"
MODULES="overlay br_netfilter nf_conntrack"
REPO=$(cd "$(dirname "$0")/.." && pwd)
STAMP="$REPO/build/.setup-host.pip"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: run as root" >&2
    exit 1
fi

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup-host: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting intended
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The Debian packages start daemons through systemd where there is one; nodeagent starts its
# own containerd (make run) or one per test node, so a stopped service is fine.

# Kernel modules and sysctls: possible on a VM, often not in a container. Tolerate failure:
# the tests give each node its own network namespace and do not need them.
if command -v modprobe >/dev/null 2>&1; then
    for mod in $MODULES; do
        modprobe -q "$mod" 2>/dev/null || echo "setup-host: cannot load $mod (continuing)"
    done
fi
# Only when asked (make run): the test suite must leave the machine's own settings alone.
[ "${SETUP_SYSCTLS:-0}" = 1 ] && for kv in net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1; do
    key=${kv%%=*}
    if [ -e "/proc/sys/$(echo "$key" | tr . /)" ]; then
        sysctl -q -w "$kv" >/dev/null 2>&1 || echo "setup-host: cannot set $kv (continuing)"
    fi
done

# Python package and dev tools; reinstalled only when pyproject.toml changes.
want=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ] || ! "$PYTHON" -c 'import importlib.metadata as m; m.version("nodeagent")' 2>/dev/null; then
    echo "setup-host: pip install -e '.[dev]'"
    (cd "$REPO" && "$PYTHON" -m pip install -q --root-user-action=ignore -e '.[dev]')
    mkdir -p "$(dirname "$STAMP")"
    echo "$want" >"$STAMP"
fi

echo "setup-host: ready"
