#!/bin/bash
# Runs inside a booted systemd (`scripts/dev systemd-boot`): installs banger as a system
# service, checks who runs what and who may use it, optionally runs a VM through the units,
# uninstalls, checks nothing is left, and powers off. Output goes to /root/result.txt; the last
# line is RESULT ok or RESULT failed.
exec > /root/result.txt 2>&1
set -x
fail() { echo "FAILED: $*"; failed=1; }
failed=0
banger system install || fail "system install"
for _ in $(seq 50); do banger --system version >/dev/null 2>&1 && break; sleep 0.2; done
[ "$(systemctl is-active banger-helper.service bangerd.service | sort -u)" = active ] || fail "units not active"
[ "$(stat -c %U /proc/"$(systemctl show -P MainPID bangerd.service)")" = banger ] || fail "bangerd is not user banger"
[ "$(stat -c %U /proc/"$(systemctl show -P MainPID banger-helper.service)")" = root ] || fail "the helper is not root"
[ "$(stat -c '%a %G' /run/banger/bangerd.sock)" = "660 banger" ] || fail "socket mode or group"
useradd -m bgmember && usermod -aG banger bgmember
runuser -u bgmember -- banger --system vm ls || fail "a member is refused"
useradd -m bgoutsider
runuser -u bgoutsider -- banger --system vm ls 2>&1 | grep -F 'sudo usermod -aG banger $USER' || fail "an outsider is not told how to join"
# Imports through the units (the daemon's openat2 under its sandbox).
if [ -f /root/kernel ] && [ -f /root/image.tar ]; then
    banger --system kernel import /root/kernel --name default || fail "kernel import"
    banger --system image import /root/image.tar --name debian || fail "image import"
fi
# The helper makes each VM's cgroup at the top of the hierarchy: under systemd-nspawn on a
# cgroup v1 host those hierarchies are read-only (a limit of the container, not of the units).
cgroups=/sys/fs/cgroup; [ -f $cgroups/cgroup.controllers ] || cgroups=$cgroups/cpu
if mkdir $cgroups/banger-probe 2>/dev/null; then rmdir $cgroups/banger-probe; vms=yes; else
    echo "SKIP VMs: $cgroups is read-only in this container"; vms=no; fi
if [ $vms = yes ] && [ -e /dev/kvm ] && [ -f /root/kernel ] && [ -f /root/image.tar ]; then
    banger --system vm run --rm --vmm qemu --memory 256 --no-net debian -- cat /etc/os-release | grep -i debian \
        || fail "a VM through the units"
    banger --system vm run --rm --vmm qemu --memory 256 debian -- true || fail "a networked VM through the units"
fi
journalctl -u banger-helper -u bangerd --no-pager | tail -60
banger system uninstall --purge || fail "system uninstall"
systemctl is-active banger-helper.service bangerd.service && fail "units still active"
getent passwd banger && fail "user banger left"
ls /etc/systemd/system/bangerd.service /etc/systemd/system/banger-helper.service /var/lib/banger 2>/dev/null && fail "files left"
userdel -r bgmember; userdel -r bgoutsider
set +x
if [ "$failed" = 0 ]; then echo "RESULT ok"; else echo "RESULT failed"; fi
systemctl poweroff
