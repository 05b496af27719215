#!/usr/bin/env bash
# The operator's guide on two fresh Debian 12 machines: builds the .debs, makes a minimal
# Debian (debootstrap --variant=minbase) for the hub and a copy for the agent, boots each with
# systemd as PID 1 (systemd-nspawn --boot), then follows docs/operators-guide.md: install with
# apt, init as the service user, a private CA and the hub's certificate, hub.toml (listen, TLS),
# an admin token, `systemctl enable --now`, an enrolment code, `init --enrol --ca-file`, records
# posted to the agent, delivered over TLS; backup + verify of both while serving; a certificate
# of another CA refused by the agent (named in `status`), the good one back by
# `systemctl reload`, delivery resumes. Run as root from the repository:
#   bash deploy/packaging/test-fresh-install.sh
# With SPACESYNC_TRANSCRIPT=FILE every command run on the machines and all it printed go to FILE
# (tokens and enrolment codes redacted): the transcript of following the guide.
# Needs debootstrap and systemd-container (Debian's packages) and a Debian mirror.
# The two machines share this machine's network namespace (hub.example is 127.0.0.1 in both):
# the hub takes port 7400 and the agent 7300 on loopback while it runs.
#
# Exit 0: every check passed. Exit 77: this machine cannot boot a container (said why); CI
# treats that as "not checked here", not as a pass. Anything else: a check failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

MIRROR=${SPACESYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
fail() { echo "test-fresh-install: FAILED: $*" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }

for tool in debootstrap systemd-nspawn nsenter; do
  command -v "$tool" >/dev/null || fail "$tool is missing (Debian's packages: debootstrap, systemd-container, util-linux)"
done
[[ $(id -u) == 0 ]] || fail "run as root (debootstrap, systemd-nspawn)"
if ss -ltn 2>/dev/null | grep -qE ':(7400|7300) '; then
  fail "port 7400 or 7300 is in use on this machine; the machines share its network"
fi

work=$(mktemp -d /var/tmp/spacesync-fresh.XXXXXX)
pids=()
cannot_boot=0
cleanup() {
  local rc=$? p i
  # 77 means "cannot boot a container" only when boot() said so.
  [[ $rc == 77 && $cannot_boot == 0 ]] && rc=1
  # SIGTERM asks systemd-nspawn to shut its machine down cleanly; wait for that.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for i in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work" || echo "test-fresh-install: could not remove $work" >&2
  exit "$rc"
}
trap cleanup EXIT

echo "== build the packages (guide §1)"
cargo build --release --locked -p spacesync-agent -p spacesync-hub
for pkg in agent hub; do
  cargo deb --no-build --locked -p "spacesync-$pkg" -o "$work/spacesync-$pkg.deb" >/dev/null
done
ok "packages built"

echo "== two fresh Debian 12 machines"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
  bookworm "$work/hubhost" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
  || { tail -5 "$work/debootstrap.log"; fail "debootstrap from $MIRROR"; }
cp -a "$work/hubhost" "$work/agenthost"
for m in hubhost agenthost; do
  echo "$m" > "$work/$m/etc/hostname"
  cp "$work/spacesync-${m%host}.deb" "$work/$m/root/"
done

leader=()
boot() {
  local m=$1
  systemd-nspawn -D "$work/$m" --boot --register=no --keep-unit --console=pipe --machine="$m" \
    > "$work/$m.console" 2>&1 &
  pids+=($!)
  local np=$! i pid state
  for i in $(seq 1 60); do
    pid=$(ps --ppid "$np" -o pid= 2>/dev/null | head -1 | tr -d " " || true)
    if [[ -n "$pid" ]]; then
      state=$(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true)
      if [[ "$state" == running || "$state" == degraded ]]; then
        leader+=("$m=$pid")
        return 0
      fi
    fi
    kill -0 "$np" 2>/dev/null || break
    sleep 1
  done
  echo "test-fresh-install: cannot boot a container on this machine (systemd-nspawn --boot):" >&2
  tail -5 "$work/$m.console" >&2
  cannot_boot=1
  exit 77
}
# Secrets never reach the transcript: admin tokens, enrolment codes, intake tokens.
redact() {
  sed -E -e 's/sst_[A-Za-z0-9_-]+/sst_…/g' -e 's/ssenrol1\.[A-Za-z0-9_-]+/ssenrol1.…/g' \
    -e 's/\b[0-9a-f]{64}\b/<intake token>/g'
}
# on MACHINE CMD: CMD as root on the machine, in a login shell of its own environment. With
# SPACESYNC_TRANSCRIPT=FILE, the command and all it printed are appended to FILE (redacted).
on() {
  local m=$1 pid="" rc=0 out err; shift
  for l in "${leader[@]}"; do [[ "${l%%=*}" == "$m" ]] && pid=${l#*=}; done
  if [[ -z "${SPACESYNC_TRANSCRIPT:-}" ]]; then
    nsenter -t "$pid" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/bash -ec "$*"
    return
  fi
  out=$(mktemp) err=$(mktemp)
  nsenter -t "$pid" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/bash -ec "$*" \
    >"$out" 2>"$err" || rc=$?
  { printf '\n%s# %s\n' "$m" "$*"; cat "$out" "$err"; [[ $rc == 0 ]] || echo "(exit $rc)"; } \
    | redact >> "$SPACESYNC_TRANSCRIPT"
  cat "$out"; cat "$err" >&2
  rm -f "$out" "$err"
  return "$rc"
}
boot hubhost
boot agenthost
ok "both machines booted with systemd as PID 1"

echo "== hub (guide §1, §3, §4)"
on hubhost 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /root/spacesync-hub.deb curl openssl >/dev/null'
on hubhost 'test "$(stat -c "%a %U" /var/lib/spacesync-hub)" = "700 spacesync"'
ok "hub package installed with apt on a minimal Debian (dependencies pulled)"
# §3: the campaign file first (here the packaged 2018 one), then init with it.
on hubhost 'install -m 0644 /usr/share/doc/spacesync-hub/campaign-2018.toml /etc/spacesync/campaign.toml &&
  runuser -u spacesync -- spacesync-hub --data /var/lib/spacesync-hub init --campaign /etc/spacesync/campaign.toml'
# §4: the CA on "another machine" (a directory the hub's files never see), the hub's key on the hub.
on hubhost 'mkdir -p /root/camachine /root/hubside &&
  cd /root/camachine && (umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=Ministry spacesync CA" -keyout ca.key -out ca.crt 2>/dev/null) &&
  cd /root/hubside && (umask 077; openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=hub.example" -keyout hub.key -out hub.csr 2>/dev/null) &&
  cp hub.csr /root/camachine/ && cd /root/camachine &&
  printf "subjectAltName=DNS:hub.example\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n" > hub.ext &&
  openssl x509 -req -in hub.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile hub.ext -out hub.crt 2>/dev/null &&
  cp ca.crt hub.crt /root/hubside/ && cd /root/hubside &&
  cp hub.key /root/hub.key.good && cp hub.crt /root/hub.crt.good &&
  install -d -m 0750 -o root -g spacesync /etc/spacesync/tls &&
  install -m 0644 ca.crt hub.crt /etc/spacesync/tls/ &&
  install -m 0640 -o root -g spacesync hub.key /etc/spacesync/tls/hub.key && rm hub.key hub.csr'
on hubhost 'cd /var/lib/spacesync-hub &&
  sed -i -e "s/^listen = .*/listen = \"0.0.0.0:7400\"/" -e "s|^# \[tls\]|[tls]|" \
    -e "s|^# cert = |cert = |" -e "s|^# key = |key = |" hub.toml &&
  grep -qx "cert = \"/etc/spacesync/tls/hub.crt\"" hub.toml &&
  echo "127.0.0.1 hub.example" >> /etc/hosts'
on hubhost '(umask 077; runuser -u spacesync -- spacesync-hub --data /var/lib/spacesync-hub token create --role admin --label ops > /root/hub-admin.token 2>/dev/null) &&
  test "$(stat -c %a /root/hub-admin.token)" = 600 && grep -q "^sst_" /root/hub-admin.token'
on hubhost 'systemctl enable --now spacesync-hub'
for i in $(seq 1 30); do
  SPACESYNC_TRANSCRIPT='' on hubhost 'curl -fsS --cacert /etc/spacesync/tls/ca.crt https://hub.example:7400/healthz' >/dev/null 2>&1 && break
  sleep 1
done
[[ $(on hubhost 'curl -fsS --cacert /etc/spacesync/tls/ca.crt https://hub.example:7400/healthz') == ok ]] \
  || { on hubhost 'journalctl -u spacesync-hub --no-pager | tail -20'; fail "the hub does not answer over HTTPS"; }
ok "hub serving HTTPS under systemd (its hardened unit), on this campaign's file"

echo "== enrol the agent (guide §5)"
code=$(on hubhost 'spacesync-hub agents invite --source gd-rrt --scope 440000 --hub https://hub.example:7400 --expires 72h --token-file /root/hub-admin.token --ca-file /etc/spacesync/tls/ca.crt' | tail -1)
[[ "$code" == ssenrol1.* ]] || fail "agents invite printed no code"
cp "$work/hubhost/etc/spacesync/tls/ca.crt" "$work/agenthost/root/ca.crt"
cp "$work/hubhost/etc/spacesync/campaign.toml" "$work/agenthost/root/campaign.toml"
on agenthost 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /root/spacesync-agent.deb curl openssl >/dev/null'
on agenthost 'cd /root && install -m 0644 ca.crt /etc/spacesync/ministry-ca.crt &&
  openssl x509 -noout -fingerprint -sha256 -in /etc/spacesync/ministry-ca.crt &&
  install -m 0644 campaign.toml /etc/spacesync/campaign.toml &&
  echo "127.0.0.1 hub.example" >> /etc/hosts'
on agenthost "CODE='$code'; runuser -u spacesync -- spacesync-agent --data /var/lib/spacesync-agent init --enrol \"\$CODE\" --campaign /etc/spacesync/campaign.toml --ca-file /etc/spacesync/ministry-ca.crt"
ok "agent enrolled with a one-time code over TLS (private CA, the hub's campaign file)"
on agenthost 'systemctl enable --now spacesync-agent'

status() { on agenthost 'runuser -u spacesync -- spacesync-agent --data /var/lib/spacesync-agent status'; }
post() { # post AS_OF: one school snapshot dated AS_OF, as the platform would
  on agenthost "printf '%s\n' '{\"kind\":\"space_count\",\"region\":\"440106\",\"school\":\"4144010601\",\"as_of\":\"$1\",\"spaces\":{\"teacher\":1200,\"student\":30500}}' > /root/r.ndjson
    for i in \$(seq 1 20); do curl -fsS -o /dev/null http://127.0.0.1:7300/healthz 2>/dev/null && break; sleep 0.5; done
    curl -fsS -H \"Authorization: Bearer \$(cat /var/lib/spacesync-agent/intake.token)\" -H 'Content-Type: application/x-ndjson' --data-binary @/root/r.ndjson http://127.0.0.1:7300/v1/records"
}
delivered() { # delivered N: waits until the agent says delivered seq N
  for i in $(seq 1 "${2:-40}"); do
    SPACESYNC_TRANSCRIPT='' status | grep -qE "^delivered seq: +$1\$" && { status >/dev/null; return 0; }
    sleep 1
  done
  status >&2
  return 1
}
# §5's first record: the packaged examples, posted as the guide writes it.
for i in $(seq 1 20); do SPACESYNC_TRANSCRIPT='' on agenthost 'curl -fsS -o /dev/null http://127.0.0.1:7300/healthz' 2>/dev/null && break; sleep 0.5; done
on agenthost 'curl -fsS -H "Authorization: Bearer $(cat /var/lib/spacesync-agent/intake.token)" \
     -H "Content-Type: application/x-ndjson" \
     --data-binary @/usr/share/doc/spacesync-agent/examples/records.ndjson http://127.0.0.1:7300/v1/records' \
  | grep -q '"accepted":3' || fail "the agent did not accept the packaged example records"
delivered 3 || fail "the agent did not deliver to the hub over TLS"
ok "records posted to the agent are delivered to the hub over TLS"
on hubhost 'curl -fsS --cacert /etc/spacesync/tls/ca.crt -H "Authorization: Bearer $(cat /root/hub-admin.token)" https://hub.example:7400/v1/sources' \
  | grep -qE '"head_seq":3[,}].*"source":"gd-rrt"' || fail "the hub does not list gd-rrt at seq 3"
ok "the hub holds the agent's entries"

echo "== backup while serving, and verify the copies (guide §7)"
on hubhost 'b=/var/backups/spacesync-hub/$(date +%F-%H%M); runuser -u spacesync -- spacesync-hub --data /var/lib/spacesync-hub backup $b >/dev/null &&
  runuser -u spacesync -- spacesync-hub --data $b verify | grep -q "^ok:"'
on agenthost 'b=/var/backups/spacesync-agent/$(date +%F-%H%M); runuser -u spacesync -- spacesync-agent --data /var/lib/spacesync-agent backup $b >/dev/null &&
  runuser -u spacesync -- spacesync-agent --data $b verify | grep -q "^OK:"'
ok "backups of both, taken while serving, verify"

echo "== a certificate of another CA, then the good one back (guide §4: systemctl reload)"
on hubhost 'cd /root && umask 077 && mkdir -p other && cd other &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=Somebody else" -keyout o.key -out o.crt 2>/dev/null &&
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=hub.example" -keyout hub.key -out hub.csr 2>/dev/null &&
  openssl x509 -req -in hub.csr -CA o.crt -CAkey o.key -CAcreateserial -days 30 -extfile /root/camachine/hub.ext -out hub.crt 2>/dev/null &&
  install -m 0644 hub.crt /etc/spacesync/tls/hub.crt && install -m 0640 -o root -g spacesync hub.key /etc/spacesync/tls/hub.key &&
  systemctl reload spacesync-hub'
ok "systemctl reload spacesync-hub (the unit's ExecReload) works on a minimal Debian"
# A reload keeps open connections on the old certificate (as it should): the agent's pooled
# connection would still deliver. A restarted agent connects anew and meets the new one.
on agenthost 'systemctl restart spacesync-agent'
post 2018-12-04 | grep -q '"accepted":1' || fail "the agent refused a record"
for i in $(seq 1 40); do
  SPACESYNC_TRANSCRIPT='' status | grep -q 'last error:.*UnknownIssuer' && break
  sleep 1
done
status | grep -q 'last error:.*not issued by a CA this agent trusts' || { status >&2; fail "status does not name the certificate problem"; }
status | grep -qE '^delivered seq: +3$' || fail "the agent delivered to a hub whose certificate it cannot verify"
ok "the agent refuses a certificate of another CA and says so in status"
on hubhost 'install -m 0644 /root/hub.crt.good /etc/spacesync/tls/hub.crt && install -m 0640 -o root -g spacesync /root/hub.key.good /etc/spacesync/tls/hub.key && systemctl reload spacesync-hub'
delivered 4 60 || fail "delivery did not resume after the good certificate was reloaded"
ok "the good certificate reloaded without a restart; delivery resumed"

echo "test-fresh-install: $checks passed, 0 failed"
