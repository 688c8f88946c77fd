package sample

import (
	"strings"

	"github.com/shirou/gopsutil/v3/disk"
)

// pseudoFS are filesystem types that hold no user data on a disk of this
// host: kernel interfaces, memory-backed and layered filesystems, and
// read-only images.
var pseudoFS = map[string]bool{
	"autofs": true, "binfmt_misc": true, "bpf": true, "cgroup": true, "cgroup2": true,
	"configfs": true, "debugfs": true, "devpts": true, "devtmpfs": true, "efivarfs": true,
	"fusectl": true, "fuse.lxcfs": true, "fuse.gvfsd-fuse": true, "fuse.portal": true,
	"hugetlbfs": true, "mqueue": true, "nsfs": true, "overlay": true, "aufs": true,
	"proc": true, "pstore": true, "ramfs": true, "rpc_pipefs": true, "securityfs": true,
	"selinuxfs": true, "squashfs": true, "sysfs": true, "tmpfs": true, "tracefs": true,
	"nfsd": true, "iso9660": true, "none": true, "shm": true, "devfs": true,
}

// realMounts picks the mount points worth reporting from the mount table:
// real filesystems only, each device once (bind mounts of a device report
// the same usage as the device's first mount), in table order.
func realMounts(parts []disk.PartitionStat) []string {
	seenDev := map[string]bool{}
	seenMount := map[string]bool{}
	var out []string
	for _, p := range parts {
		if pseudoFS[p.Fstype] || p.Mountpoint == "" {
			continue
		}
		if isBind(p.Opts) {
			continue
		}
		dev := p.Device
		if !strings.HasPrefix(dev, "/") {
			// Devices like "server:/export" or "zroot/data" are named by
			// source; an empty or "none" source says nothing.
			if dev == "" || dev == "none" {
				dev = p.Fstype + ":" + p.Mountpoint
			}
		}
		if seenDev[dev] || seenMount[p.Mountpoint] {
			continue
		}
		seenDev[dev] = true
		seenMount[p.Mountpoint] = true
		out = append(out, p.Mountpoint)
	}
	return out
}

func isBind(opts []string) bool {
	for _, o := range opts {
		if o == "bind" {
			return true
		}
	}
	return false
}
