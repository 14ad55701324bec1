#!/usr/bin/env bash
# Set up a probemesh agent on a Debian or Ubuntu node in one command:
#
#   sudo ./install-agent.sh 'pmjoin1_...'
#   (or: PROBEMESH_JOIN='pmjoin1_...' sudo -E ./install-agent.sh, keeping it out of `ps`)
#
# It installs python3-venv when missing, creates the system user, a venv with
# probemesh, enrolls the node with the join string from `probemesh token create
# --collector-url` (the collector's certificate must match the pin in it), writes
# a systemd unit that grants CAP_NET_RAW for ICMP, and starts the agent.
# Running it again keeps the enrollment and refreshes the unit.
#
# Options:
#   --package SPEC         what pip installs (default: probemesh; e.g. probemesh==0.2.0 or a wheel)
#   --venv DIR             the venv (default: /opt/probemesh; reused when it holds probemesh)
#   --state-dir DIR        the agent's state dir (default: /var/lib/probemesh-agent)
#   --user NAME            the system user (default: probemesh)
#   --metrics-listen ADDR  the agent's /metrics (default: 127.0.0.1:7445; "" turns it off)
#   --unit-dir DIR         where the unit goes (default: /etc/systemd/system)
#   --no-start             write everything but do not start the service (images, containers)
set -euo pipefail

package=""
venv=/opt/probemesh
state_dir=/var/lib/probemesh-agent
user=probemesh
metrics_listen=127.0.0.1:7445
unit_dir=/etc/systemd/system
start=1
join="${PROBEMESH_JOIN:-}"

die() { echo "install-agent: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --package) package="${2:?--package needs a value}"; shift 2 ;;
    --venv) venv="${2:?--venv needs a value}"; shift 2 ;;
    --state-dir) state_dir="${2:?--state-dir needs a value}"; shift 2 ;;
    --user) user="${2:?--user needs a value}"; shift 2 ;;
    --metrics-listen) metrics_listen="${2?--metrics-listen needs a value}"; shift 2 ;;
    --unit-dir) unit_dir="${2:?--unit-dir needs a value}"; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$join" ] || die "give the join string once"; join="$1"; shift ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (it creates a user, a venv and a systemd unit)"
[ -r /etc/os-release ] || die "cannot read /etc/os-release: Debian or Ubuntu expected"
# shellcheck source=/dev/null
os_ids="$(. /etc/os-release && echo "${ID:-} ${ID_LIKE:-}")"
case " $os_ids " in
  *" debian "*|*" ubuntu "*) ;;
  *) die "this script supports Debian and Ubuntu (found: $os_ids)" ;;
esac

already_enrolled=0
[ -f "$state_dir/agent.yml" ] && already_enrolled=1
if [ "$already_enrolled" = 0 ] && [ -z "$join" ]; then
  die "a join string is required: install-agent.sh 'pmjoin1_...' (from: probemesh token create --collector-url)"
fi

# 1. Python and the venv.
if [ -n "$package" ] || [ ! -x "$venv/bin/probemesh" ]; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  [ -d "$venv" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade "${package:-probemesh}"
fi
"$venv/bin/probemesh" --version

# 2. The system user, with no shell and no login.
if ! id -u "$user" >/dev/null 2>&1; then
  useradd --system --home-dir "$state_dir" --no-create-home --shell /usr/sbin/nologin "$user"
fi
group="$(id -gn "$user")"

# 3. Enrollment: verifies the collector's certificate pin, then writes the state dir.
if [ "$already_enrolled" = 1 ]; then
  echo "$state_dir is enrolled already; keeping it"
else
  created=0
  if [ ! -d "$state_dir" ]; then
    install -d -m 0700 -o "$user" -g "$group" "$state_dir"
    created=1
  fi
  if ! PROBEMESH_JOIN="$join" runuser -u "$user" -- \
      "$venv/bin/probemesh" agent join --no-run --state-dir "$state_dir"; then
    [ "$created" = 0 ] || rmdir "$state_dir" 2>/dev/null || true
    die "enrollment failed; nothing was installed as a service"
  fi
fi

# 4. The systemd unit.
exec_start="$venv/bin/probemesh agent --state-dir $state_dir"
[ -z "$metrics_listen" ] || exec_start+=" --metrics-listen $metrics_listen"
mkdir -p "$unit_dir"
cat >"$unit_dir/probemesh-agent.service" <<EOF
# Written by install-agent.sh. Settings: $state_dir/agent.yml (from the join
# string); options in /etc/probemesh/agent.env (PROBEMESH_<OPTION>=value) override it.
# Checks that name files (bearer_token_file, tls_config.ca_file, ...) need a secrets dir,
# e.g. PROBEMESH_SECRETS_DIR=/etc/probemesh/secrets (docs/security.md, "Agent secrets").
[Unit]
Description=probemesh agent (synthetic probes, streamed to a collector)
After=network-online.target
Wants=network-online.target

[Service]
User=$user
EnvironmentFile=-/etc/probemesh/agent.env
ExecStart=$exec_start
# SIGTERM: the agent flushes results to disk and drains what the collector acks.
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=always
RestartSec=5
# ICMP probes: a raw socket without running as root.
AmbientCapabilities=CAP_NET_RAW
CapabilityBoundingSet=CAP_NET_RAW
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths=$state_dir

[Install]
WantedBy=multi-user.target
EOF

if [ "$start" = 1 ]; then
  systemctl daemon-reload
  systemctl enable probemesh-agent.service
  systemctl restart probemesh-agent.service  # a re-run picks up the refreshed unit
  echo "probemesh agent running: systemctl status probemesh-agent; journalctl -u probemesh-agent"
else
  echo "wrote $unit_dir/probemesh-agent.service (not started: --no-start)"
fi
