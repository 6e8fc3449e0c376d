#!/bin/sh
# A/B disk layout of the reference board (GPT, 1 MiB aligned). U-Boot's env.txt and the
# initramfs rely on these partition numbers:
#   1 env      FAT   U-Boot environment file (boot counters only are honoured)
#   2 fit_a    raw   signed FIT of slot A      3 fit_b  raw  signed FIT of slot B
#   4 rootfs_a raw   squashfs + verity tree    5 rootfs_b raw
#   6 data     ext4  device state (/data)
# Usage: layout.sh DISK FIT_A FIT_B ROOTFS_A ROOTFS_B
# Partition sizes (MiB) can be overridden with FIT_MB, ROOTFS_MB, DATA_MB, ENV_MB.
set -eu
DISK=$1; FIT_A=$2; FIT_B=$3; ROOT_A=$4; ROOT_B=$5
ENV_MB=${ENV_MB:-8}; FIT_MB=${FIT_MB:-32}; ROOTFS_MB=${ROOTFS_MB:-320}; DATA_MB=${DATA_MB:-512}
for f in "$FIT_A" "$FIT_B"; do
    [ "$(stat -c %s "$f")" -le $((FIT_MB * 1048576)) ] || { echo "$f larger than ${FIT_MB} MiB" >&2; exit 1; }
done
for f in "$ROOT_A" "$ROOT_B"; do
    [ "$(stat -c %s "$f")" -le $((ROOTFS_MB * 1048576)) ] || { echo "$f larger than ${ROOTFS_MB} MiB" >&2; exit 1; }
done
total=$((1 + ENV_MB + 2 * FIT_MB + 2 * ROOTFS_MB + DATA_MB + 1))
rm -f "$DISK"
truncate -s ${total}M "$DISK"
sfdisk -q "$DISK" <<EOT
label: gpt
first-lba: 2048
size=${ENV_MB}MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=env
size=${FIT_MB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=fit_a
size=${FIT_MB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=fit_b
size=${ROOTFS_MB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_a
size=${ROOTFS_MB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_b
size=${DATA_MB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data
EOT
start_of() { sfdisk -q -l -o Start "$DISK" | sed -n "$(( $1 + 1 ))p" | tr -d ' '; }
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
truncate -s ${ENV_MB}M "$WORK/env.img"
mkfs.vfat -n ENV "$WORK/env.img" >/dev/null
dd if="$WORK/env.img" of="$DISK" bs=512 seek="$(start_of 1)" conv=notrunc,sparse status=none
dd if="$FIT_A" of="$DISK" bs=512 seek="$(start_of 2)" conv=notrunc,sparse status=none
dd if="$FIT_B" of="$DISK" bs=512 seek="$(start_of 3)" conv=notrunc,sparse status=none
dd if="$ROOT_A" of="$DISK" bs=512 seek="$(start_of 4)" conv=notrunc,sparse status=none
dd if="$ROOT_B" of="$DISK" bs=512 seek="$(start_of 5)" conv=notrunc,sparse status=none
truncate -s ${DATA_MB}M "$WORK/data.img"
mkfs.ext4 -q -L data -m 0 -O ^metadata_csum_seed "$WORK/data.img"
dd if="$WORK/data.img" of="$DISK" bs=512 seek="$(start_of 6)" conv=notrunc,sparse status=none
