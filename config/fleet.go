package config

// setFleet decodes fleet.
func (l *loader) setFleet(a loc, v any) {
	fl := &l.cfg.Fleet
	l.mapping(a, v, "fleet settings", func(a loc, v any) {
		switch a.p[len(a.p)-1] {
		case "servers":
			l.setStrings(a, v, &fl.Servers)
		case "role":
			l.setString(a, v, &fl.Role)
		case "group":
			l.setString(a, v, &fl.Group)
		case "credentials_file":
			l.setString(a, v, &fl.CredentialsFile)
		case "signing_key_file":
			l.setString(a, v, &fl.SigningKeyFile)
		case "trusted_keys":
			l.setStrings(a, v, &fl.TrustedKeys)
		case "replicas":
			l.setInt(a, v, &fl.Replicas)
		case "tls":
			l.mapping(a, v, "TLS settings", func(a loc, v any) {
				switch a.p[len(a.p)-1] {
				case "ca_file":
					l.setString(a, v, &fl.TLS.CAFile)
				case "cert_file":
					l.setString(a, v, &fl.TLS.CertFile)
				case "key_file":
					l.setString(a, v, &fl.TLS.KeyFile)
				default:
					l.unknown(a)
				}
			})
		default:
			l.unknown(a)
		}
	})
}

// validateFleet checks the fleet section's shape; its servers, group and
// keys are checked by the fleet package (cmd/webknock's checks).
func (l *loader) validateFleet(at func(p ...any) loc, bad func(a loc, format string, args ...any)) {
	fl := l.cfg.Fleet
	if fl.Role == "" {
		if len(fl.Servers) > 0 || fl.SigningKeyFile != "" || len(fl.TrustedKeys) > 0 {
			bad(at("fleet", "role"), "required with the other fleet settings: detector, enforcer or both")
		}
		return
	}
	oneOf(bad, at("fleet", "role"), "role", fl.Role, "detector", "enforcer", "both")
	if fl.Replicas < 1 || fl.Replicas > 5 {
		bad(at("fleet", "replicas"), "bad replicas %d: want 1 to 5 (3 on a cluster of three servers)", fl.Replicas)
	}
	if (fl.TLS.CertFile == "") != (fl.TLS.KeyFile == "") {
		bad(at("fleet", "tls"), "cert_file and key_file go together")
	}
	detector := fl.Role == "detector" || fl.Role == "both"
	enforcer := fl.Role == "enforcer" || fl.Role == "both"
	if detector && fl.SigningKeyFile == "" {
		bad(at("fleet", "signing_key_file"), "required for role %s: the key that signs this detector's grants (webknock keygen -o FILE)", fl.Role)
	}
	if !detector && fl.SigningKeyFile != "" {
		bad(at("fleet", "signing_key_file"), "only a detector signs grants; remove it or set role: both")
	}
	if enforcer && len(fl.TrustedKeys) == 0 {
		bad(at("fleet", "trusted_keys"), "required for role %s: the public keys of the detectors whose grants apply here", fl.Role)
	}
}
