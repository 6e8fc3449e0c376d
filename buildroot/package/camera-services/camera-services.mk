################################################################################
#
# camera-services: the agent, bootverify and the board's init, from this repository
#
################################################################################

CAMERA_SERVICES_VERSION = local
CAMERA_SERVICES_SITE = $(BR2_EXTERNAL_CAMERA_PATH)/..
CAMERA_SERVICES_SITE_METHOD = local
CAMERA_SERVICES_LICENSE = Apache-2.0
CAMERA_SERVICES_SETUP_TYPE = setuptools
CAMERA_SERVICES_DEPENDENCIES = python3

define CAMERA_SERVICES_INSTALL_BOARD_FILES
	$(INSTALL) -D -m 0755 $(@D)/board/rootfs/camera-init $(TARGET_DIR)/sbin/camera-init
	$(INSTALL) -D -m 0755 $(@D)/board/rootfs/powerkey.py $(TARGET_DIR)/usr/lib/camera/powerkey.py
	$(INSTALL) -D -m 0755 $(@D)/board/rootfs/udhcpc.script $(TARGET_DIR)/etc/camera/udhcpc.script
	$(INSTALL) -D -m 0644 $(@D)/board/rootfs/agent.json $(TARGET_DIR)/etc/camera/agent.json
endef
CAMERA_SERVICES_POST_INSTALL_TARGET_HOOKS += CAMERA_SERVICES_INSTALL_BOARD_FILES

# The station and the release signing tools are host tools (as in qemu/build_image.py).
define CAMERA_SERVICES_REMOVE_HOST_TOOLS
	rm -rf $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/provisioning \
		$(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/bootverify/release
	rm -f $(TARGET_DIR)/usr/bin/camera-provision $(TARGET_DIR)/usr/bin/camera-ota
endef
CAMERA_SERVICES_POST_INSTALL_TARGET_HOOKS += CAMERA_SERVICES_REMOVE_HOST_TOOLS

$(eval $(python-package))
