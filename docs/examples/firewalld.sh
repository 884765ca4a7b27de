#!/bin/sh
# webknock beside firewalld: run as root, after webknock runs with
#
#   firewall:
#     backend: nftables
#
# in /etc/webknock/webknock.yaml (systemctl restart webknock).
#
#   sh firewalld.sh [ZONE]
#
# ZONE is the firewalld zone of the interface clients reach SSH on
# (firewall-cmd --get-active-zones); default: firewalld's default zone.
#
# How they fit: webknock keeps its own table, inet webknock, whose input
# chains (priority filter - 10, before firewalld's at filter + 10) drop NEW
# connections to the guarded ports (22/tcp) from everyone it has not
# granted. An accept in one table does not override a drop or reject in
# another: firewalld must accept SSH itself (its public zone does by
# default), or no grant could let anyone in. So firewalld keeps port 22
# open and webknock decides who reaches it.
#
# Reloads and restarts (measured with firewalld 1.3.3 of Debian 12, its
# default FirewallBackend=nftables): firewall-cmd --reload and
# --complete-reload, and starting, stopping or restarting firewalld, delete
# and recreate firewalld's own table (inet firewalld) only. There is no
# `flush ruleset`: table inet webknock and its grants stay as they are.
# (Should anything else delete it, webknock puts it back at once with the
# live grants.) firewalld does, however, flush all iptables tables
# (iptables -F -X) on each of them, which wipes the chain of webknock's
# iptables backend: with firewalld, use the nftables backend.
set -eu

zone=${1:-$(firewall-cmd --get-default-zone)}

# firewalld accepts SSH and leaves who may connect to webknock. (If ssh is
# already in the zone, firewall-cmd warns ALREADY_ENABLED; that is fine.)
firewall-cmd --permanent --zone="$zone" --add-service=ssh
# The web server that serves the knock URLs must be reachable too.
firewall-cmd --permanent --zone="$zone" --add-service=http --add-service=https
# Apply the permanent configuration (this leaves webknock's table alone).
firewall-cmd --reload

# Check: firewalld accepts SSH, and webknock's table is in the ruleset.
firewall-cmd --zone="$zone" --query-service=ssh
if ! nft list ruleset | grep -q '^table inet webknock {'; then
	echo "no table inet webknock: is webknock running with firewall.backend: nftables?" >&2
	exit 1
fi
# Both tables: table inet firewalld and table inet webknock.
nft list tables
