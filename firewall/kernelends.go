package firewall

import "time"

// kernelEnds says when the kernel's timeout of each element webknock put
// in a set ends, on this host's monotonic clock. An element past it is
// gone from the kernel already (a lookup no longer matches it, and the
// kernel collects it): deleting it when its grant ends is no work to do.
// So a mass expiry costs the kernel nothing, unless the wall clock ran
// ahead since the element was put (the grant then ends before the kernel's
// timeout, and the element is deleted). An element of unknown end (put by
// a reconcile) is always deleted.
type kernelEnds map[any]time.Time

// put records the timeout of the element of k, put now; 0: unknown.
func (e kernelEnds) put(k any, timeout time.Duration) {
	if timeout <= 0 {
		delete(e, k)
		return
	}
	e[k] = time.Now().Add(timeout)
}

// gone tells whether the kernel's timeout of the element of k has passed.
func (e kernelEnds) gone(k any) bool {
	end, ok := e[k]
	return ok && time.Now().After(end)
}
