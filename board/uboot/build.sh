#!/bin/sh
# Build the hardened U-Boot (qemu_arm64) from Debian's u-boot source package.
# Usage: build.sh OUTDIR
# Produces OUTDIR/u-boot-nodtb.bin (the control DTB carrying the release key is appended later by
# board/uboot/embed-key.sh) and OUTDIR/.stamp keyed on the inputs, so a rebuild happens only when
# the config fragment, the patch or the environment changes.
set -eu
OUT=$(realpath -m "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
KEY=$(cat "$HERE/hardened.config" "$HERE"/*.patch "$HERE/env.txt" "$HERE/build.sh" | sha256sum | cut -c1-16)
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$KEY" ] && [ -f "$OUT/u-boot-nodtb.bin" ]; then
    echo "u-boot: up to date ($KEY)"
    exit 0
fi
# Debian's source package is downloaded once into the build's cache and unpacked from there on
# every rebuild (dpkg-source checks the tarballs against the .dsc). `make clean` drops it; a newer
# Debian u-boot is picked up then.
CACHE=${UBOOT_SRC_CACHE:-$(dirname "$OUT")/cache/uboot-src}
mkdir -p "$CACHE"
if ! ls "$CACHE"/u-boot_*.dsc >/dev/null 2>&1; then
    ( cd "$CACHE" && apt-get source --download-only -q u-boot >/dev/null 2>&1 ) || {
        echo "u-boot: apt-get source u-boot failed (deb-src entry? see qemu/prepare-apt.sh)" >&2; exit 1; }
fi
DSC=$(ls "$CACHE"/u-boot_*.dsc | sort -V | tail -1)
SRCROOT="$OUT/src"
rm -rf "$SRCROOT" && mkdir -p "$SRCROOT"
( cd "$SRCROOT" && dpkg-source -q -x "$DSC" tree >/dev/null 2>&1 )
T="$SRCROOT/tree"
( cd "$T" && patch -p1 -s < "$HERE/0001-camera-env-writeable-list.patch" )
B="$OUT/obj"
rm -rf "$B"
make -s -C "$T" O="$B" CROSS_COMPILE=aarch64-linux-gnu- qemu_arm64_defconfig
# The default environment file path must be absolute for the out-of-tree build.
{ grep -E '^(# )?CONFIG_' "$HERE/hardened.config" ; \
  echo "CONFIG_DEFAULT_ENV_FILE=\"$HERE/env.txt\""; } > "$B/camera.config"
"$T/scripts/kconfig/merge_config.sh" -m -O "$B" "$B/.config" "$B/camera.config" >/dev/null
make -s -C "$T" O="$B" CROSS_COMPILE=aarch64-linux-gnu- olddefconfig
# Fail the build if Kconfig silently dropped a hardening option.
grep -E '^(# )?CONFIG_' "$HERE/hardened.config" | while IFS= read -r opt; do
    case "$opt" in
    "# "*) name=${opt#\# }; name=${name%% *}
           if grep -q "^$name=" "$B/.config"; then echo "u-boot: $name still set" >&2; exit 1; fi ;;
    *) grep -qxF "$opt" "$B/.config" || { echo "u-boot: $opt did not stick" >&2; exit 1; } ;;
    esac
done
for opt in LEGACY_IMAGE_FORMAT DISTRO_DEFAULTS CMD_SOURCE OF_BOARD EFI_LOADER ENV_IS_IN_FLASH CMD_BOOTI; do
    if grep -q "^CONFIG_$opt=y" "$B/.config"; then echo "u-boot: $opt still enabled" >&2; exit 1; fi
done
make -s -C "$T" O="$B" CROSS_COMPILE=aarch64-linux-gnu- -j"$(nproc)" u-boot-nodtb.bin tools 2>&1 | grep -v "^$" || true
cp "$B/u-boot-nodtb.bin" "$OUT/u-boot-nodtb.bin"
cp "$B/.config" "$OUT/u-boot.config"
echo "$KEY" > "$OUT/.stamp"
echo "u-boot: built ($KEY)"
