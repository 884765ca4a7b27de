package main

import (
	"fmt"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
)

// knockConfig adapts the configuration to the knock core, reading the key
// of every one-time sequence.
func knockConfig(cfg *config.Config) (knock.Config, error) {
	kc := knock.Config{Lockout: knock.Lockout{
		Failures: cfg.Lockout.Failures, Period: cfg.Lockout.Period, Duration: cfg.Lockout.Duration,
	}}
	keys := map[string][]byte{} // key file -> key: sequences may share one
	for i, s := range cfg.Sequences {
		ks, err := knockSequenceKeys(&s, keys)
		if err != nil {
			return knock.Config{}, fmt.Errorf("sequences[%d].one_time.key_file: %w", i, err)
		}
		kc.Sequences = append(kc.Sequences, ks)
	}
	return kc, nil
}

// knockSequence adapts one sequence; the error is the key file's.
func knockSequence(s *config.Sequence) (knock.Sequence, error) {
	return knockSequenceKeys(s, nil)
}

// knockSequenceKeys is knockSequence taking the key from keys, by file,
// when there (reading and adding it otherwise, if keys is not nil).
func knockSequenceKeys(s *config.Sequence, keys map[string][]byte) (knock.Sequence, error) {
	ports := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		ports[i] = p.String()
	}
	ks := knock.Sequence{
		Name: s.Name, Steps: s.Steps, StepStatus: s.StepStatus, Methods: s.Methods,
		KnockPage: s.KnockPage, KnockPageStatus: s.KnockPageStatus,
		Timeout: s.Timeout, Window: s.Window, Ports: ports,
		ClosePage: s.ClosePage, AllowFrom: s.AllowFrom, Expires: s.Expires,
		GrantBits4: hostBits(s.GrantPrefix.IPv4, 32), GrantBits6: hostBits(s.GrantPrefix.IPv6, 128),
	}
	if ot := s.OneTime; ot != nil {
		key, ok := keys[ot.KeyFile]
		if !ok {
			var err error
			if key, err = readKeyFile(ot.KeyFile); err != nil {
				return knock.Sequence{}, err
			}
			if keys != nil {
				keys[ot.KeyFile] = key
			}
		}
		ks.OneTime = &knock.OneTime{Mode: knockMode(ot.Mode), Key: key, Prefix: ot.Prefix, Steps: ot.Steps, Period: ot.Period, Skew: ot.Skew}
	}
	return ks, nil
}

// hostBits is a grant prefix length for knock: 0 for the address alone.
func hostBits(bits, full int) int {
	if bits == full {
		return 0
	}
	return bits
}

// knockMode adapts a one_time mode.
func knockMode(mode string) knock.Mode {
	if mode == config.ModeTOTP {
		return knock.ModeTOTP
	}
	return knock.ModeHMAC
}
