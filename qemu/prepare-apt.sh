#!/bin/sh
# Prepare apt for the QEMU reference image: arm64 packages (rootfs, kernel, veritysetup for the
# initramfs) and Debian source packages (u-boot is built from Debian's source). Idempotent.
set -eu
changed=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    changed=1
fi
SRC=/etc/apt/sources.list.d/camera-deb-src.sources
if [ ! -f "$SRC" ]; then
    cat > "$SRC" <<'EOS'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    changed=1
fi
STAMP=/var/lib/apt/camera-prepare-apt.stamp
if [ "$changed" = 1 ] || [ ! -f "$STAMP" ]; then
    apt-get update -q
    touch "$STAMP"
fi
here=$(dirname "$0")
pkgs=$(grep -v '^#' "$here/../deps/apt-qemu.txt" | tr '\n' ' ')
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
