# Reference board image (QEMU aarch64 virt). Included by the top-level Makefile, which defines
# VENV, PY and BUILD. `make image` builds the signed A/B image; `make run-qemu` builds when
# needed, boots, provisions, claims and stays in the foreground until Ctrl-C / SIGTERM.
QEMU_PROFILE ?= release

.PHONY: qemu-prepare image image-dev run-qemu bench-boot

qemu-prepare:
	sh qemu/prepare-apt.sh

image: qemu-prepare
	$(PY) -m qemu.build_image --build $(BUILD) --profile $(QEMU_PROFILE)

image-dev: qemu-prepare
	$(PY) -m qemu.build_image --build $(BUILD) --profile dev

run-qemu: image
	$(PY) -m qemu.run --build $(BUILD) --profile $(QEMU_PROFILE)

bench-boot: image
	$(PY) -m bench.boot.boot_time --build $(BUILD)
