package main

// This file replays a capture of syslog messages: what log.syslog
// receives, as a relay writes it to a file or a stream carries it.

import (
	"errors"
	"fmt"
	"io"

	"github.com/webknock/webknock/weblog"
)

// reasonSyslog counts the messages whose body cannot be a line: an
// oversized or cut message, or a header that does not parse.
const reasonSyslog weblog.Reason = "syslog"

// replaySyslog replays the bodies of the syslog messages of r, each as a
// line numbered by its message; every body is examined.
func (rp *replayer) replaySyslog(fs *fileStats, r io.Reader) error {
	no := int64(0)
	err := weblog.ScanSyslog(r, weblog.MaxLineBytes, func(msg []byte, skipped error) error {
		no++
		fs.Lines++
		fs.Examined++
		body, err := msg, skipped
		if err == nil {
			body, err = weblog.SyslogBody(msg)
		}
		if err != nil {
			fs.Skipped[reasonSyslog]++
			if rp.o.printSkipped {
				fmt.Fprintf(rp.skippedOut, "%s:%d: skipped: %v\n", fs.Name, no, err)
			}
			return nil
		}
		rp.line(no, body)
		return rp.writeErr
	})
	if fe := (*weblog.SyslogFrameError)(nil); errors.As(err, &fe) && errors.Is(err, weblog.ErrTruncated) {
		fs.Lines++
		fs.Skipped[reasonSyslog]++
		err = nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", fs.Name, err)
	}
	return rp.checkFormat(fs)
}
