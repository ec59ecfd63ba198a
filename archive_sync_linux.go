package main

// archive_sync_linux.go: one syncfs for a whole release instead of an fsync
// per file, which would make a package of many small files several times
// slower to deploy than tar.

import (
	"os"
	"runtime"
	"syscall"
)

// sysSyncfs is syncfs(2)'s number; the syscall package lacks it on amd64.
var sysSyncfs = map[string]uintptr{"amd64": 306, "386": 344, "arm64": 267, "arm": 373, "riscv64": 267, "loong64": 267, "ppc64le": 348, "s390x": 338}[runtime.GOARCH]

// syncTree makes everything written under dir durable.
func syncTree(dir string) error {
	if sysSyncfs == 0 {
		return syncTreeWalk(dir)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if _, _, e := syscall.Syscall(sysSyncfs, d.Fd(), 0, 0); e != 0 {
		return syncTreeWalk(dir)
	}
	return nil
}
