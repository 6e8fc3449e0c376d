#!/bin/sh
# Make the final u-boot.bin: U-Boot proper + its control device tree carrying the FIT public key
# (required="conf"). Because the DTB is appended to the binary (OF_SEPARATE), starting QEMU without
# -dtb, or with another one, cannot remove the key. Usage:
#   embed-key.sh U-BOOT-NODTB.BIN BOARD.dtb KEYDIR KEYNAME OUT-u-boot.bin OUT-control.dtb
set -eu
NODTB=$1; BOARD_DTB=$2; KEYDIR=$3; KEYNAME=$4; OUT=$5; OUTDTB=$6
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
cp "$BOARD_DTB" "$WORK/control.dtb"
# Signing a throw-away FIT is how mkimage writes a public key node into a device tree.
head -c 64 /dev/zero > "$WORK/dummy"
"$(dirname "$0")/sign-fit.sh" "$KEYDIR" "$KEYNAME" "$WORK/dummy" "$WORK/dummy" "$WORK/dummy.itb" "$WORK/control.dtb"
fdtget "$WORK/control.dtb" "/signature/key-$KEYNAME" required | grep -qx conf
cp "$WORK/control.dtb" "$OUTDTB"
cat "$NODTB" "$WORK/control.dtb" > "$OUT"
