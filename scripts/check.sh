#!/usr/bin/env bash
# Install what the tests need, then run the linters and the whole test suite.
# This is the README's test command; .ci/run calls it on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use, installed only if missing: iproute2 (network
# namespaces), nftables (NAT routers and packet loss in the lab), conntrack (a
# router forgets its old mappings when a test changes its rules), avahi (the mDNS
# interop test runs a private avahi-daemon inside a namespace), chromium (the web
# UI's browser tests drive Debian's Chromium through Playwright) and firefox-esr
# (one more UI test drives it over WebDriver BiDi, inside a namespace).
need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v conntrack >/dev/null 2>&1 || need_apt+=(conntrack)
command -v avahi-daemon >/dev/null 2>&1 || need_apt+=(avahi-daemon)
command -v avahi-browse >/dev/null 2>&1 || need_apt+=(avahi-utils)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/firefox-esr ] || need_apt+=(firefox-esr)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        # Keep the packages' services from starting on this machine's own network:
        # the tests start avahi-daemon only inside namespaces they create.
        made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need_apt[@]}"
        [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    else
        echo "note: missing ${need_apt[*]}; the tests that need them will be skipped" >&2
    fi
fi
# Whatever started it, no avahi-daemon may run in this (the root) network namespace.
if [ "$(id -u)" = 0 ] && command -v avahi-daemon >/dev/null 2>&1; then
    avahi-daemon --kill >/dev/null 2>&1 || true
fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'

echo "== ruff"
python3 -m ruff check src tests bench
echo "== mypy --strict src/"
python3 -m mypy --strict src/
echo "== pytest"
python3 -m pytest -q "$@"
