#!/usr/bin/env bash
# Install (or remove) the fedinfra edge client on a Linux device.
#
#   edge/install.sh [--prefix DIR] [--server HOST:PORT] [--kit DIR] [--site FILE] [--user NAME]
#                   [--uninstall [--purge]] [--source PATH|SPEC] [--python PY] [--reuse-site DIR] [--enable]
#
# Creates, under the prefix (default /opt/fedinfra-edge):
#   venv/                       a virtual environment with fedinfra[edge]
#   etc/device.toml             the device profile (kept if it exists; --server updates it)
#   etc/kit/                    a copy of the device's kit (with --kit), secrets 0600
#   etc/site-manifest           with --site: the absolute path of the device's data declaration
#                               (site.toml, left where it is, next to its data)
#   lib/fedinfra-edge.service   the systemd unit, paths filled in (--enable links and starts it)
#   state/                      created by the client: ledger, receipts (kept by --uninstall
#                               unless --purge: deleting a ledger forgets spent privacy budget)
# The service never runs as root: run as root, install.sh creates the system account
# --user (default fedinfra-edge, no login shell, no home) and gives it state/ and etc/kit/;
# run as another user, the unit runs as that user.
# Idempotent: running it again upgrades fedinfra in place and keeps the profile and state.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="/opt/fedinfra-edge"
server=""
kit=""
site_file=""
uninstall=0
purge=0
enable=0
python="${PYTHON:-python3}"
reuse_site=""
service_user=""
source_spec=""
if [[ -f "$here/../pyproject.toml" ]]; then source_spec="$(cd "$here/.." && pwd)"; fi

die() { echo "install.sh: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) need_value "$@"; prefix="$2"; shift 2 ;;
    --server) need_value "$@"; server="$2"; shift 2 ;;
    --kit) need_value "$@"; kit="$2"; shift 2 ;;
    --site) need_value "$@"; site_file="$2"; shift 2 ;;
    --source) need_value "$@"; source_spec="$2"; shift 2 ;;
    --python) need_value "$@"; python="$2"; shift 2 ;;
    --reuse-site) need_value "$@"; reuse_site="$2"; shift 2 ;;
    --user) need_value "$@"; service_user="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --enable) enable=1; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ "$prefix" = /* ]] || prefix="$(pwd)/$prefix"
unit_name="fedinfra-edge.service"
unit_link="/etc/systemd/system/$unit_name"
marker="$prefix/.fedinfra-edge"

if [[ $uninstall -eq 1 ]]; then
  if [[ ! -f "$marker" && ! ( $purge -eq 1 && -d "$prefix/state" ) ]]; then
    echo "nothing to uninstall at $prefix"; exit 0
  fi
  if [[ -L "$unit_link" && "$(readlink "$unit_link")" == "$prefix/lib/$unit_name" ]]; then
    systemctl disable --now "$unit_name" >/dev/null 2>&1 || true
    rm -f "$unit_link"
    systemctl daemon-reload >/dev/null 2>&1 || true
  fi
  rm -rf "$prefix/venv" "$prefix/lib" "$prefix/etc" "$prefix/bin"
  if [[ $purge -eq 1 ]]; then rm -rf "$prefix/state"; fi
  rm -f "$marker"
  rmdir "$prefix" 2>/dev/null || true
  if [[ -d "$prefix/state" ]]; then
    echo "uninstalled from $prefix (kept $prefix/state: ledger and receipts; --purge removes them)"
  else
    echo "uninstalled from $prefix"
  fi
  exit 0
fi

[[ -n "$source_spec" ]] || source_spec="fedinfra"
if [[ -n "$server" && ! "$server" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$ ]]; then
  die "--server must be host:port (got '$server')"
fi
if [[ -n "$kit" && ! -f "$kit/kit.toml" ]]; then die "--kit $kit holds no kit.toml"; fi
if [[ -n "$site_file" ]]; then
  [[ -f "$site_file" ]] || die "--site $site_file is not a file (the device's site.toml)"
  site_file="$(cd "$(dirname "$site_file")" && pwd)/$(basename "$site_file")"
fi
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$python is older than Python 3.11; pass --python"

# The account the service runs as: never root.
if [[ $(id -u) -eq 0 ]]; then
  [[ -n "$service_user" ]] || service_user="fedinfra-edge"
  [[ "$service_user" != "root" ]] || die "--user root: the edge client must not run as root"
  [[ "$service_user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user must be a plain account name"
  if ! getent passwd "$service_user" >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir "$prefix/state" \
      --shell /usr/sbin/nologin "$service_user" || die "could not create account $service_user"
  fi
else
  own="$(id -un)"
  [[ -z "$service_user" || "$service_user" == "$own" ]] || die "--user needs root (it creates the account)"
  service_user="$own"
fi

mkdir -p "$prefix/etc" "$prefix/lib" "$prefix/bin" "$prefix/state"
chmod 700 "$prefix/state"
touch "$marker"

# 1. The virtual environment (created once, upgraded in place).
if [[ ! -x "$prefix/venv/bin/python" ]]; then
  "$python" -m venv "$prefix/venv"
fi
pip_args=(--disable-pip-version-check --quiet)
if [[ -n "$reuse_site" ]]; then
  # Reuse packages already installed on the device (e.g. a vendor's torch build): a .pth
  # file puts them on the venv's path, so pip treats them as installed instead of downloading.
  site="$("$prefix/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  printf '%s\n' "$(cd "$reuse_site" && pwd)" > "$site/fedinfra-reuse-site.pth"
fi
if [[ -d "$source_spec" ]]; then
  "$prefix/venv/bin/python" -m pip install "${pip_args[@]}" "$source_spec[edge]"
else
  "$prefix/venv/bin/python" -m pip install "${pip_args[@]}" --upgrade "$source_spec[edge]"
fi
ln -sf "$prefix/venv/bin/fedinfra" "$prefix/bin/fedinfra"

# 2. The device profile: installed once, never overwritten; --server updates its address.
device="$prefix/etc/device.toml"
if [[ ! -f "$device" ]]; then
  sed 's|^state_dir = .*|state_dir = "'"$prefix"'/state"|' "$here/device.toml" > "$device"
fi
if [[ -n "$server" ]]; then
  if grep -q '^server = ' "$device"; then
    sed -i 's|^server = .*|server = "'"$server"'"|' "$device"
  else
    sed -i '1i server = "'"$server"'"' "$device"
  fi
fi

# 3. The kit (copied, so the device does not depend on removable media).
if [[ -n "$kit" ]]; then
  rm -rf "$prefix/etc/kit.new"
  cp -R "$kit" "$prefix/etc/kit.new"
  chmod 700 "$prefix/etc/kit.new"
  find "$prefix/etc/kit.new" -type f \( -name '*.key' -o -name '*secret*' \) -exec chmod 600 {} +
  rm -rf "$prefix/etc/kit"
  mv "$prefix/etc/kit.new" "$prefix/etc/kit"
fi
if [[ $(id -u) -eq 0 ]]; then
  # The service account owns what it reads and writes; root keeps the code (venv).
  chown -R "$service_user:$service_user" "$prefix/state"
  if [[ -d "$prefix/etc/kit" ]]; then chown -R "$service_user:$service_user" "$prefix/etc/kit"; fi
fi

# 4. The data declaration: remembered across re-runs; without one, the client looks for
#    site.toml next to the profile ($prefix/etc/site.toml).
if [[ -n "$site_file" ]]; then printf '%s\n' "$site_file" > "$prefix/etc/site-manifest"; fi
site_arg=""
if [[ -f "$prefix/etc/site-manifest" ]]; then site_arg=" --site $(cat "$prefix/etc/site-manifest")"; fi

# 5. The systemd unit with this prefix's paths.
sed -e "s|@PREFIX@|$prefix|g" -e "s|@SITE_ARG@|$site_arg|" -e "s|@USER@|$service_user|g" "$here/$unit_name" > "$prefix/lib/$unit_name"
if [[ $enable -eq 1 ]]; then
  [[ $(id -u) -eq 0 ]] || die "--enable needs root (it links the unit into /etc/systemd/system)"
  ln -sf "$prefix/lib/$unit_name" "$unit_link"
  systemctl daemon-reload
  systemctl enable --now "$unit_name"
fi

"$prefix/venv/bin/fedinfra" --version
echo "installed in $prefix"
echo "  profile: $device"
echo "  preflight: $prefix/bin/fedinfra edge start --device $device --check"
echo "  unit: $prefix/lib/$unit_name (runs as $service_user; --enable links and starts it)"
