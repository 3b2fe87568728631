#!/usr/bin/env bash
# Make sure the system packages the dev stack and the test suite need are installed:
# PostgreSQL server binaries with the PostGIS and pg_cron extensions, redis-server, and the
# system Python's venv module (python3-venv) when that is the Python the virtualenv uses.
# seatd.devstack starts its own private instances from these binaries (never the system
# services on 5432/6379), so only the packages are needed, not running services.
#
# Quick and silent when everything is present (no apt call). Otherwise: as root with apt-get,
# installs what is missing; as another user, uses sudo if available; else prints what to
# install and exits 1.
set -euo pipefail

DEFAULT_PG_MAJOR=15

have_server_bins() { [[ -x "$1/initdb" && -x "$1/pg_ctl" && -x "$1/postgres" && -x "$1/psql" ]]; }

# Same search order as seatd.devstack.find_pg_bindir().
pg_bindir() {
    local dir major
    if [[ -n "${SEATD_PG_BINDIR:-}" ]] && have_server_bins "$SEATD_PG_BINDIR"; then
        echo "$SEATD_PG_BINDIR"; return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$dir" ]] && have_server_bins "$dir"; then echo "$dir"; return 0; fi
    fi
    for major in $(installed_pg_majors); do
        dir="/usr/lib/postgresql/$major/bin"
        if have_server_bins "$dir"; then echo "$dir"; return 0; fi
    done
    return 1
}

# Majors with something under /usr/lib/postgresql, newest first.
installed_pg_majors() {
    local d
    for d in /usr/lib/postgresql/*/; do
        [[ -d "$d" ]] && basename "$d"
    done | grep -E '^[0-9]+$' | sort -rn || true
}

# The extension dirs that belong to the server in $1 (its own pg_config first).
extension_dirs() {
    local bindir="$1" sharedir major
    if [[ -x "$bindir/pg_config" ]]; then
        sharedir="$("$bindir/pg_config" --sharedir 2>/dev/null || true)"
        [[ -n "$sharedir" ]] && echo "$sharedir/extension"
    fi
    major="$(basename "$(dirname "$bindir")")"
    [[ "$major" =~ ^[0-9]+$ ]] && echo "/usr/share/postgresql/$major/extension"
    if command -v pg_config >/dev/null 2>&1; then
        sharedir="$(pg_config --sharedir 2>/dev/null || true)"
        [[ -n "$sharedir" ]] && echo "$sharedir/extension"
    fi
    return 0
}

has_extension() {
    local bindir="$1" name="$2" dir
    while read -r dir; do
        [[ -f "$dir/$name.control" ]] && return 0
    done < <(extension_dirs "$bindir")
    return 1
}

pg_major() {
    local major
    major="$(installed_pg_majors | head -n1)"
    echo "${major:-$DEFAULT_PG_MAJOR}"
}

# Prints the missing Debian packages, one per line.
missing_packages() {
    local major bindir
    major="$(pg_major)"
    if ! bindir="$(pg_bindir)"; then
        printf '%s\n' "postgresql-$major" "postgresql-$major-postgis-3" "postgresql-$major-cron"
    else
        major="$(basename "$(dirname "$bindir")")"
        [[ "$major" =~ ^[0-9]+$ ]] || major="$(pg_major)"
        has_extension "$bindir" postgis || echo "postgresql-$major-postgis-3"
        has_extension "$bindir" pg_cron || echo "postgresql-$major-cron"
    fi
    command -v redis-server >/dev/null 2>&1 || echo redis-server
    # `make venv` needs the venv module with ensurepip, which Debian ships separately.
    if [[ "$(command -v "${PYTHON:-python3}" 2>/dev/null)" == /usr/bin/* ]]; then
        "${PYTHON:-python3}" -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv
    fi
    return 0
}

apt_install() {
    local -a sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else return 1; fi
    fi
    command -v apt-get >/dev/null 2>&1 || return 1
    echo "ensure-system-deps: installing: $*" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@"
}

# PostgreSQL refuses to run as root: as root, seatd.devstack runs it as this OS user.
ensure_postgres_user() {
    [[ "$(id -u)" -eq 0 ]] || return 0
    id -u postgres >/dev/null 2>&1 && return 0
    echo "ensure-system-deps: creating the postgres OS user" >&2
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

main() {
    local -a missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} > 0)); then
        if ! apt_install "${missing[@]}"; then
            echo "ensure-system-deps: missing system packages: ${missing[*]}" >&2
            echo "install them with: sudo apt-get install ${missing[*]}" >&2
            echo "(elsewhere: PostgreSQL server with PostGIS and pg_cron, and redis-server)" >&2
            exit 1
        fi
        mapfile -t missing < <(missing_packages)
        if ((${#missing[@]} > 0)); then
            echo "ensure-system-deps: still missing after install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    ensure_postgres_user
}

main "$@"
