"""Verification shared by the initramfs stage and the agent's OTA installer, and the release tools.

``bootverify.bundle`` is pure (bytes and time in, results out): RAUC-compatible verity bundles, CMS
signatures, manifests, dm-verity trees, the read-only squashfs reader. It must not import ``agent``,
because it also runs in the initramfs before the agent exists.
"""
