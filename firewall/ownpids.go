package firewall

import (
	"os"
	"strconv"
	"strings"
	"sync"
)

// The processes webknock ran (iptables, ip6tables) lately: their changes
// to table filter are ours, and no hint to check (nftOurs). A ring of the
// last few: a process id the kernel has since given to another program
// only costs that program's change its hint; the periodic check remains.
var ownPIDs struct {
	sync.Mutex
	ring [64]int
	next int
}

// rememberPID records a process webknock started.
func rememberPID(pid int) {
	ownPIDs.Lock()
	defer ownPIDs.Unlock()
	ownPIDs.ring[ownPIDs.next] = pid
	ownPIDs.next = (ownPIDs.next + 1) % len(ownPIDs.ring)
}

// ranPID tells whether webknock started the process pid lately.
func ranPID(pid int) bool {
	ownPIDs.Lock()
	defer ownPIDs.Unlock()
	for _, p := range ownPIDs.ring {
		if p != 0 && p == pid {
			return true
		}
	}
	return false
}

// ranByUs tells whether webknock started the process pid: its child still
// (running, or exited and not yet waited for), or one it started lately.
// In this order: a child is remembered before it is waited for, so one
// that is gone by the second look was remembered by then.
func ranByUs(pid int) bool {
	if stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
				return true
			}
		}
	}
	return ranPID(pid)
}
