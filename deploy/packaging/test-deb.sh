#!/usr/bin/env bash
# Builds the agent's and the hub's .deb, installs them on this machine (root, Debian),
# checks what an operator relies on, then purges them. Run by .ci/run; run it by hand the
# same way: `bash deploy/packaging/test-deb.sh` from the repository (as root).
#
# Checked: `spacesync-agent --version` and `spacesync-hub --version` from /usr/bin; the
# system user `spacesync` exists; /var/lib/spacesync-{agent,hub} are 0700 and owned by it;
# `init` run as that user (the documented step) writes a key the service user owns, 0600;
# `systemd-analyze verify` accepts both hardened units; purge removes the binaries and the
# units, and keeps a data directory that holds data (it holds the keys).
set -euo pipefail
cd "$(dirname "$0")/../.."

DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$DEB_VERSION"; then
  cargo install cargo-deb --locked --version "$DEB_VERSION"
fi
for tool in dpkg systemd-analyze runuser adduser; do
  command -v "$tool" >/dev/null || { echo "test-deb: $tool is missing (Debian's packages: dpkg, systemd, util-linux, adduser)"; exit 1; }
done

fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }

cargo build --release --locked -p spacesync-agent -p spacesync-hub
work=$(mktemp -d)
trap 'dpkg --purge spacesync-agent spacesync-hub >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
for pkg in agent hub; do
  cargo deb --no-build --locked -p "spacesync-$pkg" -o "$work/spacesync-$pkg.deb" >/dev/null
done

dpkg -i "$work/spacesync-agent.deb" "$work/spacesync-hub.deb"
ok "dpkg -i of both packages"

v=$(/usr/bin/spacesync-agent --version) || fail "spacesync-agent --version"
[[ "$v" == spacesync-agent* ]] || fail "spacesync-agent --version printed: $v"
ok "$v"
v=$(/usr/bin/spacesync-hub --version) || fail "spacesync-hub --version"
ok "$v"

getent passwd spacesync >/dev/null || fail "no spacesync user"
ok "system user spacesync"
for pkg in agent hub; do
  st=$(stat -c '%a %U' "/var/lib/spacesync-$pkg")
  [[ "$st" == "700 spacesync" ]] || fail "/var/lib/spacesync-$pkg is $st, want 700 spacesync"
  ok "/var/lib/spacesync-$pkg 700 spacesync"
  st=$(stat -c '%a %U' "/var/backups/spacesync-$pkg")
  [[ "$st" == "700 spacesync" ]] || fail "/var/backups/spacesync-$pkg is $st, want 700 spacesync"
  ok "/var/backups/spacesync-$pkg 700 spacesync (the unit's ReadWritePaths for backups)"
done

runuser -u spacesync -- /usr/bin/spacesync-agent --data /var/lib/spacesync-agent init \
  --source gd-rrt --scope 440000 --hub https://hub.example >/dev/null 2>&1 || fail "agent init as spacesync"
st=$(stat -c '%a %U' /var/lib/spacesync-agent/agent.key)
[[ "$st" == "600 spacesync" ]] || fail "agent.key is $st, want 600 spacesync"
ok "agent init as the service user: agent.key 600 spacesync"
runuser -u spacesync -- /usr/bin/spacesync-hub --data /var/lib/spacesync-hub init >/dev/null 2>&1 || fail "hub init as spacesync"
st=$(stat -c '%a %U' /var/lib/spacesync-hub/hub.key)
[[ "$st" == "600 spacesync" ]] || fail "hub.key is $st, want 600 spacesync"
ok "hub init as the service user: hub.key 600 spacesync"

for pkg in agent hub; do
  unit=/lib/systemd/system/spacesync-$pkg.service
  [[ -f "$unit" ]] || unit=/usr/lib/systemd/system/spacesync-$pkg.service
  [[ -f "$unit" ]] || fail "spacesync-$pkg.service not installed"
  out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $out"
  ok "systemd-analyze verify spacesync-$pkg.service${out:+ ($out)}"
  # Every program the unit runs must come from this package, a package it depends on, or an
  # Essential one: a minimal Debian (debootstrap --variant=minbase) has no /bin/kill unless
  # procps is pulled in, and `systemctl reload` then fails with 203/EXEC.
  depends=$(dpkg-query -W -f='${Depends}' "spacesync-$pkg" | tr ',|' '\n\n' | sed 's/(.*//; s/:any//; s/ //g')
  for exe in $(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\(\/[^ ]*\).*/\1/p' "$unit" | sort -u); do
    owner=$(dpkg -S "$exe" 2>/dev/null || dpkg -S "/usr$exe" 2>/dev/null || dpkg -S "$(readlink -f "$exe")" 2>/dev/null) \
      || fail "$unit runs $exe, which no installed package provides"
    owner=${owner%%:*}
    essential=$(dpkg-query -W -f='${Essential}' "$owner")
    [[ "$owner" == "spacesync-$pkg" || "$essential" == yes ]] || grep -qx "$owner" <<<"$depends" \
      || fail "$unit runs $exe from package $owner, which spacesync-$pkg does not depend on (Depends: $depends)"
    ok "spacesync-$pkg.service runs $exe ($owner)"
  done
done

dpkg --purge spacesync-agent spacesync-hub
[[ ! -e /usr/bin/spacesync-agent && ! -e /usr/bin/spacesync-hub ]] || fail "binaries left after purge"
[[ -f /var/lib/spacesync-agent/agent.key ]] || fail "purge removed the agent's key"
ok "purge: binaries gone, the data directory with its key kept"
[[ ! -e /var/backups/spacesync-hub ]] || fail "purge left the empty /var/backups/spacesync-hub"
ok "purge: the empty backup directories removed"
rm -rf /var/lib/spacesync-agent /var/lib/spacesync-hub
echo "test-deb: $checks passed, 0 failed"
