#!/bin/bash
# PID 1 of the lab guest (baked into the image as /sbin/detrace-lab-init; everything else comes
# over the host share so that editing it never rebuilds the image). Mounts what OVS, OVN and
# eBPF need, mounts the share at /mnt/host, runs /mnt/host/guest/<detrace.mode>.sh, powers off.
# Lines starting with "DETRACE-GUEST " are read by the host (xtask/src/lab/qemu.rs).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux
mark() { echo "DETRACE-GUEST $* (guest uptime $(cut -d' ' -f1 /proc/uptime)s)"; }
off() { sync; echo o > /proc/sysrq-trigger; sleep 30; }
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mkdir -p /run/netns /run/lock
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing; mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
hostname detrace-lab; ip link set lo up
mark userspace kernel=$(uname -r)
modprobe 9pnet_virtio 2>/dev/null; modprobe 9p 2>/dev/null
mkdir -p /mnt/host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/host; then
  mark error cannot mount the host share; off
fi
MODE=$(sed -n 's/.*detrace\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ ! -f "/mnt/host/guest/$MODE.sh" ]; then mark error no script for mode "'$MODE'"; off; fi
bash "/mnt/host/guest/$MODE.sh"
mark exit mode=$MODE rc=$?
off
