"""The device's TLS identity: self-issued until factory provisioning installs a factory chain."""
