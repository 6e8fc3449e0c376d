"""Boot stage of bootverify: boot facts, anti-rollback, attestation record, outbound firewall.

Enforcement at boot (dm-verity open with the signed root hash, the rollback check, refusing to hand
off) runs in the initramfs as busybox sh + veritysetup, because Python in the initramfs would add
seconds under TCG and megabytes to the signed FIT. This package holds the same rules as pure Python
and runs from the verified rootfs right after hand-off (`camera-bootverify attest`): it re-derives
the verdict from the facts the initramfs recorded and from the kernel's own view (dm-verity status,
/proc/cmdline, /chosen/u-boot,bootconf), and writes the attestation record the agent reports.
"""
