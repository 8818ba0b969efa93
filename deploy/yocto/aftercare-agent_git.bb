# Yocto recipe sketch for the Aftercare device agent. Put it in your
# product layer (recipes-support/aftercare/), pin SRCREV to a release tag's
# commit, and provide the trusted roots and agent.yaml in files/.
SUMMARY = "Aftercare device agent: signed A/B updates, health check, rollback, reports"
HOMEPAGE = "https://github.com/aftercare/aftercare"
# The repository has no LICENSE file yet: replace CLOSED and add
# LIC_FILES_CHKSUM when it does.
LICENSE = "CLOSED"

GO_IMPORT = "github.com/aftercare/aftercare"
GO_INSTALL = "${GO_IMPORT}/agent/cmd/aftercare-agent"
SRC_URI = "git://${GO_IMPORT}.git;protocol=https;branch=main;destsuffix=${GO_SRCURI_DESTSUFFIX} \
           file://root.json \
           file://rollout-root.json \
           file://agent.yaml \
          "
SRCREV = "${AUTOREV}"
PV = "0.1+git"

inherit go-mod systemd useradd

# Static, stripped, no cgo: the same binary `make agent` builds.
CGO_ENABLED = "0"
GO_LINKSHARED = ""
GOBUILDFLAGS:append = " -trimpath"
GO_EXTRA_LDFLAGS = "-s -w -buildid="
# go-mod fetches modules in do_compile unless vendored; allow it or vendor
# them with `go mod vendor` in a bbappend.
do_compile[network] = "1"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system aftercare"
USERADD_PARAM:${PN} = "--system --gid aftercare --home-dir /var/lib/aftercare --no-create-home --shell /sbin/nologin aftercare"

SYSTEMD_SERVICE:${PN} = "aftercare-agent.service"
SYSTEMD_AUTO_ENABLE = "enable"

# U-Boot boards need fw_setenv (libubootenv); GRUB boards grub-editenv.
RDEPENDS:${PN} += "libubootenv-bin"

do_install:append() {
    install -d ${D}${sysconfdir}/aftercare
    install -m 0644 ${WORKDIR}/root.json ${D}${sysconfdir}/aftercare/root.json
    install -m 0644 ${WORKDIR}/rollout-root.json ${D}${sysconfdir}/aftercare/rollout-root.json
    install -m 0640 -g aftercare ${WORKDIR}/agent.yaml ${D}${sysconfdir}/aftercare/agent.yaml
    install -D -m 0644 ${S}/src/${GO_IMPORT}/deploy/agent/aftercare-agent.service \
        ${D}${systemd_system_unitdir}/aftercare-agent.service
    install -D -m 0644 ${S}/src/${GO_IMPORT}/deploy/agent/99-aftercare-slots.rules \
        ${D}${sysconfdir}/udev/rules.d/99-aftercare-slots.rules
}

FILES:${PN} += "${systemd_system_unitdir}/aftercare-agent.service ${sysconfdir}/udev/rules.d"
