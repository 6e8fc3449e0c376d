"""Device-side OTA: verified streaming install into the inactive slot, boot selection, anti-rollback.

Verification is ``bootverify.bundle`` (shared with the initramfs stage); this package adds the
device policy (model, versions, security version), the slot/boot-chooser/rollback-index backends,
the installer state machine, the management API, the pull client and the schedule.
"""
