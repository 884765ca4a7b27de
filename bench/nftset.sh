#!/usr/bin/env bash
# A granted client's connect time through an nftables set of 1 and of
# 10,000 elements (the layout of webknock's nftables backend, reduced to
# the lookup), in two network namespaces joined by a veth pair: what the
# kernel's set costs, without webknock. Needs root, ip and nft.
# Usage: sudo bench/nftset.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out
mkdir -p "$out"
go test -c -o "$out/webknock.test" ./cmd/webknock
a=wkset-a$$ b=wkset-b$$
ip netns add "$a"; ip netns add "$b"
trap 'kill "$listener" 2>/dev/null || true; ip netns del "$a"; ip netns del "$b"' EXIT
ip link add va$$ netns "$a" type veth peer name vb$$ netns "$b"
ip -n "$a" addr add 2001:db8::11/64 dev va$$ nodad
ip -n "$b" addr add 2001:db8::1/64 dev vb$$ nodad
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set va$$ up; ip -n "$b" link set vb$$ up
ip netns exec "$b" nft -f - <<'NFT'
table inet t {
	set g { type ipv6_addr . inet_proto . inet_service; flags timeout; }
	chain c {
		type filter hook input priority filter - 10; policy accept;
		meta nfproto != ipv6 return
		meta l4proto . th dport != { tcp . 22 } return
		ip6 saddr . meta l4proto . th dport @g accept
		ct state new drop
	}
}
NFT
ip netns exec "$b" nft add element inet t g '{ 2001:db8::11 . tcp . 22 timeout 1h }'
WK_E2E_HELPER=listen ip netns exec "$b" "$out/webknock.test" '[2001:db8::1]:22' > "$out/nftset.listener" &
listener=$!
until grep -q ready "$out/nftset.listener" 2>/dev/null; do sleep 0.05; done
# The least median of nine rounds of 200 connects.
connect() {
	for _ in 1 2 3 4 5 6 7 8 9; do
		WK_E2E_HELPER=connlat ip netns exec "$a" "$out/webknock.test" '2001:db8::11 [2001:db8::1]:22 200'
	done | sort -n | head -n 1
}
python3 -c "print('add element inet t g { ' + ', '.join('2001:db8:1::%x:%x . tcp . 22 timeout 1h' % (i >> 16, i & 0xffff) for i in range(9999)) + ' }')" > "$out/nftset.nft"
printf 'connect, 1 element:       %s us\n' "$(connect)"
ip netns exec "$b" nft -f "$out/nftset.nft"
printf 'connect, 10,000 elements: %s us\n' "$(connect)"
ip netns exec "$b" nft flush set inet t g
ip netns exec "$b" nft add element inet t g '{ 2001:db8::11 . tcp . 22 timeout 1h }'
printf 'connect, 1 element again: %s us\n' "$(connect)"
