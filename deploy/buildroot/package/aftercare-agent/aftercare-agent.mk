################################################################################
#
# aftercare-agent
#
# A sketch for a BR2_EXTERNAL tree: add `source "$BR2_EXTERNAL_..._PATH/
# package/aftercare-agent/Config.in"` to your Config.in and include this
# file from your external.mk. Pin the version to a release tag and fill in
# the hash file (aftercare-agent.hash) for your tarball.
#
################################################################################

AFTERCARE_AGENT_VERSION = v0.1.0
AFTERCARE_AGENT_SITE = $(call github,aftercare,aftercare,$(AFTERCARE_AGENT_VERSION))
# The repository has no LICENSE file yet: set these when it does.
# AFTERCARE_AGENT_LICENSE =
# AFTERCARE_AGENT_LICENSE_FILES = LICENSE
# Dependencies are vendored at download time by golang-package (go mod
# vendor), so the build itself needs no network.

AFTERCARE_AGENT_GOMOD = github.com/aftercare/aftercare
AFTERCARE_AGENT_BUILD_TARGETS = agent/cmd/aftercare-agent
# Static and stripped as `make agent`: no cgo, no build ID.
AFTERCARE_AGENT_GO_ENV = CGO_ENABLED=0
AFTERCARE_AGENT_LDFLAGS = -s -w -buildid=
AFTERCARE_AGENT_INSTALL_BINS = aftercare-agent

# The dedicated user and group of aftercare-agent.service; its home is the
# state directory.
define AFTERCARE_AGENT_USERS
	aftercare -1 aftercare -1 * /var/lib/aftercare - - Aftercare device agent
endef

AFTERCARE_AGENT_ROOTS_DIR = $(call qstrip,$(BR2_PACKAGE_AFTERCARE_AGENT_ROOTS_DIR))

define AFTERCARE_AGENT_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(AFTERCARE_AGENT_ROOTS_DIR)/root.json \
		$(TARGET_DIR)/etc/aftercare/root.json
	$(INSTALL) -D -m 0644 $(AFTERCARE_AGENT_ROOTS_DIR)/rollout-root.json \
		$(TARGET_DIR)/etc/aftercare/rollout-root.json
	$(INSTALL) -D -m 0640 $(AFTERCARE_AGENT_ROOTS_DIR)/agent.yaml \
		$(TARGET_DIR)/etc/aftercare/agent.yaml
	$(INSTALL) -D -m 0644 $(@D)/deploy/agent/99-aftercare-slots.rules \
		$(TARGET_DIR)/etc/udev/rules.d/99-aftercare-slots.rules
endef
AFTERCARE_AGENT_POST_INSTALL_TARGET_HOOKS += AFTERCARE_AGENT_INSTALL_CONFIG

define AFTERCARE_AGENT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/deploy/agent/aftercare-agent.service \
		$(TARGET_DIR)/usr/lib/systemd/system/aftercare-agent.service
endef

$(eval $(golang-package))
