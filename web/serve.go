package web

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync/atomic"
)

// endpoint is one listener being served, with its own http.Server so that
// a Rebind can shut it down alone.
type endpoint struct {
	ln      net.Listener // as bound: identifies the endpoint across a Rebind
	srv     *http.Server
	retired atomic.Bool // closed on purpose: Serve's error is expected
}

// Serve serves on the listeners (Options.Listeners, then those of each
// Rebind) until ctx ends, then shuts down gracefully (in-flight requests
// get a few seconds), closes the listeners and returns nil. It returns an
// error early only if a listener fails for good (after shutting down).
// From its start the Server owns the listeners.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("web: Serve is already running")
	}
	s.serving = true
	s.fatal = make(chan error, 1)
	fatal := s.fatal
	if s.lns != nil {
		s.lns.taken.Store(true)
		if s.lns.tcp != nil {
			s.startLocked(s.lns.tcp, false)
		}
		if s.lns.unix != nil {
			s.startLocked(s.lns.unix, true)
		}
	}
	s.mu.Unlock()

	var err error
	select {
	case <-ctx.Done():
	case err = <-fatal:
	}

	s.mu.Lock()
	s.serving = false
	eps := s.eps
	s.eps, s.lns = nil, nil
	for _, ep := range eps {
		s.stopLocked(ep)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// Bind is the package's Bind for a reload: what the server listens on now
// at the same listen or socket is shared, not bound again (it could not
// be: the address is taken, by us). Nothing changes until Rebind; a reload
// that is refused after Bind closes the result, which closes only what this
// call bound. Bind and Rebind are for one goroutine, one reload at a time.
func (s *Server) Bind(listen, socket string) (*Listeners, error) {
	s.mu.Lock()
	cur := s.lns
	s.mu.Unlock()
	if cur == nil {
		cur = &Listeners{}
	}
	l := &Listeners{listen: listen, socket: socket}
	if listen != "" {
		if cur.tcp != nil && cur.listen == listen {
			l.tcp, l.sharedTCP = cur.tcp, true
		} else {
			ln, err := bindTCP(listen)
			if err != nil {
				return nil, err
			}
			l.tcp = ln
		}
	}
	if socket != "" {
		if cur.unix != nil && filepath.Clean(cur.socket) == filepath.Clean(socket) {
			l.unix, l.sharedUnix = cur.unix, true
		} else {
			ln, err := bindUnix(socket)
			if err != nil {
				l.Close()
				return nil, err
			}
			l.unix = ln
		}
	}
	return l, nil
}

// Rebind serves on l from now on (from Server.Bind, or the package's Bind
// for addresses the server does not have): a listener l shares with the
// current set keeps serving, with its connections; the others stop
// listening before Rebind returns and finish their requests in the
// background. The Server owns l from now on.
func (s *Server) Rebind(l *Listeners) {
	if l == nil {
		l = &Listeners{}
	}
	l.taken.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.lns
	s.lns = l
	if !s.serving {
		if old != nil && old.tcp != nil && old.tcp != l.tcp {
			old.tcp.Close()
		}
		if old != nil && old.unix != nil && old.unix != l.unix {
			old.unix.Close()
		}
		return
	}
	served := map[net.Listener]bool{}
	kept := s.eps[:0:0]
	for _, ep := range s.eps {
		if ep.ln == l.tcp || ep.ln == l.unix {
			kept = append(kept, ep)
			served[ep.ln] = true
		} else {
			s.stopLocked(ep)
		}
	}
	s.eps = kept
	if l.tcp != nil && !served[l.tcp] {
		s.startLocked(l.tcp, false)
	}
	if l.unix != nil && !served[l.unix] {
		s.startLocked(l.unix, true)
	}
}

// startLocked serves ln in a goroutine; socket: it is the admin socket.
func (s *Server) startLocked(ln net.Listener, socket bool) {
	srv := &http.Server{
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	serveLn := ln
	addr := ln.Addr().String()
	if socket {
		srv.Handler = s.admin
		srv.ConnContext = connWithPeer
		s.log.Info("admin socket listening", keyPath, addr)
	} else {
		srv.Handler = securityHeaders(checkHost(listenerHosts(s.lns.listen, ln.Addr()), s.tcpMux))
		serveLn = limitListener{Listener: ln, l: s.conns}
		s.log.Info("web listening", keyAddr, addr)
		if ap, err := netip.ParseAddrPort(addr); err == nil && !ap.Addr().IsLoopback() {
			s.log.Warn("web listens beyond loopback without TLS: the status page is public and the token travels in clear; put a TLS proxy in front", keyAddr, addr)
		}
	}
	ep := &endpoint{ln: ln, srv: srv}
	s.eps = append(s.eps, ep)
	fatal := s.fatal
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// Serve closes the listener when it returns, also when a
		// shutdown came first.
		if err := srv.Serve(serveLn); !errors.Is(err, http.ErrServerClosed) && !ep.retired.Load() {
			err = fmt.Errorf("web: serve on %s: %w", addr, err)
			s.log.Error("web: a listener failed; the API is down", keyAddr, addr, keyErr, err)
			select {
			case fatal <- err:
			default:
			}
		}
	}()
}

// stopLocked closes ep's listener now, so its address is free when the
// caller returns, and lets its requests finish in the background; Serve
// waits for them.
func (s *Server) stopLocked(ep *endpoint) {
	ep.retired.Store(true)
	ep.ln.Close()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := ep.srv.Shutdown(ctx); err != nil {
			s.log.Warn("web: requests still running at shutdown; closed", keyAddr, ep.ln.Addr().String(), keyErr, err)
			ep.srv.Close()
		}
	}()
}
