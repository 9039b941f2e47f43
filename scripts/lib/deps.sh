# Installs the system packages walrusfs needs, when missing. Sourced by scripts.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# apt_install CMD:PACKAGE ... installs PACKAGE when CMD is not on PATH.
apt_install() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

install_run_deps() {
  apt_install fusermount3:fuse3
  # Let mounts serve other users (allow_other) when mounted by a non-root user.
  if [ -f /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
    as_root sh -c 'echo user_allow_other >> /etc/fuse.conf' || true
  fi
}

install_test_deps() {
  install_run_deps
  apt_install rsync:rsync git:git sqlite3:sqlite3 tar:tar restic:restic borg:borgbackup
  # A second machine in the archive tests is a network namespace (ip netns, nsenter).
  apt_install ip:iproute2 nsenter:util-linux
}
