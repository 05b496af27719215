#!/usr/bin/env bash
# Builds the agent's and the hub's .rpm (cargo-generate-rpm, from the release binaries) and
# checks what an RPM-based machine (openEuler, Kylin) would install, with `rpm -qp`: the files
# and their modes, that the packaged binary is byte for byte the one built here, and the
# scriptlets (the system user `spacesync`, the 0700 data and backup directories, the systemd
# reload). It does not install them: this is a Debian machine without an RPM database of its
# own. Run by .ci/run after test-deb.sh (which leaves the release binaries); by hand:
# `bash deploy/packaging/test-rpm.sh` (needs `rpm` and `cargo generate-rpm`).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
checks=0
ok() { checks=$((checks + 1)); echo "ok - $*"; }
fail() { echo "FAIL - $*" >&2; exit 1; }

for pkg in agent hub; do
  bin="$target/release/spacesync-$pkg"
  [[ -x "$bin" ]] || cargo build --release --locked -p "spacesync-$pkg"
  out="$target/generate-rpm"
  rm -f "$out"/spacesync-"$pkg"-*.rpm
  cargo generate-rpm -p "$pkg" --target-dir "$target" --auto-req disabled >/dev/null
  rpmf=$(ls "$out"/spacesync-"$pkg"-*.rpm)
  ok "built $(basename "$rpmf")"

  files=$(rpm -qp --queryformat '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpmf" 2>/dev/null)
  grep -qx -- "-rwxr-xr-x /usr/bin/spacesync-$pkg" <<<"$files" || fail "$pkg: /usr/bin/spacesync-$pkg 0755 missing in: $files"
  grep -qx -- "-rw-r--r-- /usr/lib/systemd/system/spacesync-$pkg.service" <<<"$files" || fail "$pkg: unit missing in: $files"
  grep -q " /usr/share/doc/spacesync-$pkg/operators-guide.md$" <<<"$files" || fail "$pkg: operator's guide missing in: $files"
  ok "$pkg: binary 0755 in /usr/bin, unit in /usr/lib/systemd/system, the operator's guide"

  want=$(sha256sum "$bin" | cut -d' ' -f1)
  got=$(rpm -qp --queryformat '[%{FILEDIGESTS} %{FILENAMES}\n]' "$rpmf" 2>/dev/null | awk -v f="/usr/bin/spacesync-$pkg" '$2 == f { print $1 }')
  [[ "$got" == "$want" ]] || fail "$pkg: the packaged binary's digest $got is not the built one's $want"
  ok "$pkg: the packaged binary is the one built (sha256 $want)"

  unit=$(rpm -qp --queryformat '[%{FILEDIGESTS} %{FILENAMES}\n]' "$rpmf" 2>/dev/null | awk -v f="/usr/lib/systemd/system/spacesync-$pkg.service" '$2 == f { print $1 }')
  [[ "$unit" == "$(sha256sum "deploy/systemd/spacesync-$pkg.service" | cut -d' ' -f1)" ]] || fail "$pkg: the packaged unit is not deploy/systemd's"
  ok "$pkg: the packaged unit is deploy/systemd/spacesync-$pkg.service"

  scripts=$(rpm -qp --scripts "$rpmf" 2>/dev/null)
  for want in "useradd -r -g spacesync" "groupadd -r spacesync" \
              "install -d -m 0700 -o spacesync -g spacesync /var/lib/spacesync-$pkg" \
              "install -d -m 0700 -o spacesync -g spacesync /var/backups/spacesync-$pkg" \
              "systemctl daemon-reload"; do
    grep -qF -- "$want" <<<"$scripts" || fail "$pkg: scriptlets lack '$want': $scripts"
  done
  # The scriptlets are plain sh: they must at least parse.
  for phase in preinstall postinstall postuninstall; do
    body=$(rpm -qp --queryformat "%{${phase^^}}" "$rpmf" 2>/dev/null)
    [[ "$body" == "(none)" ]] && continue
    sh -n <<<"$body" || fail "$pkg: the $phase scriptlet does not parse: $body"
  done
  ok "$pkg: scriptlets create the user and the 0700 data and backup directories, and parse"
done
echo "test-rpm: $checks passed, 0 failed"
