#!/usr/bin/env bash
# Install what the tests need, then run the linters and the whole test suite.
# This is the README's test command; .ci/run calls it on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use (network namespaces, NAT rules). Installed only if missing.
need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "note: missing ${need_apt[*]}; the tests that need them will be skipped" >&2
    fi
fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'

echo "== ruff"
python3 -m ruff check src tests bench
echo "== mypy --strict src/"
python3 -m mypy --strict src/
echo "== pytest"
python3 -m pytest -q "$@"
