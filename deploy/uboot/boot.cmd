# Aftercare A/B boot script for U-Boot, RAUC's variables and logic.
# Build: mkimage -A arm -T script -C none -d boot.cmd boot.scr
#
# BOOT_ORDER   slots to try, first to last ("A B" or "B A")
# BOOT_A_LEFT  boots slot A may still be tried; one is used per boot
# BOOT_B_LEFT  the same for slot B
#
# The agent writes all three in one fw_setenv -s call (see docs/agent.md):
#   install:  BOOT_ORDER="B A" BOOT_B_LEFT=1 BOOT_A_LEFT=3   (try B once)
#   commit:   BOOT_ORDER="B"   BOOT_B_LEFT=3 BOOT_A_LEFT=0   (every good boot)
# A slot not committed again before its counter reaches 0 is skipped. A
# committed slot is alone in BOOT_ORDER: the agent may be rewriting the
# other one, so not even the reset below may boot it.
#
# Adapt the partition numbers (slot A = mmc 0:2, slot B = mmc 0:3), the
# kernel and device tree names and the console to the board.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv bootpart
setenv raucslot
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test "x${bootpart}" != "x"; then
    # a slot is chosen; skip the rest
  elif test "x${BOOT_SLOT}" = "xA"; then
    if test ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
      echo "aftercare: booting slot A, ${BOOT_A_LEFT} attempts left"
      setenv bootpart 2
      setenv raucslot A
    fi
  elif test "x${BOOT_SLOT}" = "xB"; then
    if test ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
      echo "aftercare: booting slot B, ${BOOT_B_LEFT} attempts left"
      setenv bootpart 3
      setenv raucslot B
    fi
  fi
done

if test -n "${bootpart}"; then
  # Save the decremented counter before the kernel starts: a crash or a
  # watchdog reset during this boot still counts as an attempt.
  saveenv
else
  echo "aftercare: no slot has attempts left; resetting to 3"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  saveenv
  reset
fi

setenv bootargs "console=${console} root=/dev/mmcblk0p${bootpart} rootwait ro rauc.slot=${raucslot}"
load mmc 0:${bootpart} ${kernel_addr_r} /boot/Image
load mmc 0:${bootpart} ${fdt_addr_r} /boot/${fdtfile}
booti ${kernel_addr_r} - ${fdt_addr_r}
echo "aftercare: slot ${raucslot} did not boot; resetting"
reset
