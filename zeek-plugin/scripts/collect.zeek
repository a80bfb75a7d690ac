##! Collection: the first packets of every TCP/UDP connection (headers,
##! and the first payload bytes of a few of them), handed to publish.zeek
##! once packets_per_flow packets were seen or the connection ended.

@load base/protocols/conn/thresholds
@load ./config
@load ./types
@load ./metrics
@load ./publish

module ETooL;

## Per-connection collection state.
type State: record {
	start: time;
	packets: vector of Packet &default=vector();
	payload: vector of Chunk &default=vector();
	next_orig: count &default=1; ##< Armed orig packet threshold.
	next_resp: count &default=1; ##< Armed resp packet threshold.
	done: bool &default=F;
};

redef record connection += {
	etool: State &optional;
};

## Where the transport payload of the current packet starts in pkt$data,
## or -1 if unknown. The payload is the tail of the (outermost) IP packet:
## on Ethernet we walk VLAN tags to the IP header and read its length, so
## padding and trailers are skipped and tunnels work (the inner packet ends
## where the outer one does). Other link types: the frame ends with the IP
## packet.
function payload_offset(pkt: pcap_packet, hdr: raw_pkt_hdr, plen: count): int
	{
	local data = pkt$data;
	local end_ = pkt$len;

	if ( hdr$l2$encap == LINK_ETHERNET )
		{
		local off = 12;
		local l3 = 0;  # a count, as end_ is: an int assigned to a count is a warning at every start
		local found = F;

		while ( off + 2 <= |data| )
			{
			local etype = bytestring_to_count(data[off:off + 2]);
			if ( etype == 0x8100 || etype == 0x88a8 || etype == 0x9100 )
				off += 4;
			else
				{
				if ( etype == 0x0800 || etype == 0x86dd )
					{
					l3 = off + 2;
					found = T;
					}
				break;
				}
			}

		if ( found && l3 + 6 <= |data| )
			{
			local version = bytestring_to_count(data[l3]) / 16;
			if ( version == 4 )
				end_ = l3 + bytestring_to_count(data[l3 + 2:l3 + 4]);
			else if ( version == 6 )
				end_ = l3 + 40 + bytestring_to_count(data[l3 + 4:l3 + 6]);
			}
		}

	if ( end_ < plen )
		return -1;

	return end_ - plen;
	}

## Where the TLS ClientHello or ServerHello that starts at data[start] ends,
## relative to start (5-byte record header + 4-byte handshake header + its
## length), or 0 if none starts there. The Python side's flows.hello_end.
function hello_end(data: string, start: int, plen: count): count
	{
	if ( plen < 9 || start + 9 > |data| )
		return 0;

	if ( data[start] != "\x16" || data[start + 1] != "\x03" )
		return 0;

	local t = data[start + 5];
	if ( t != "\x01" && t != "\x02" )
		return 0;

	return 9 + 65536 * bytestring_to_count(data[start + 6]) +
	    bytestring_to_count(data[start + 7:start + 9]);
	}

## Collection of c is over: hand the flow to publish.zeek.
function finish(c: connection, final: bool)
	{
	local s = c$etool;
	s$done = T;
	publish(c, s$packets, s$payload, s$start, final);
	}

## Records the current packet. Called once per packet via ConnThreshold.
function add_packet(c: connection, is_orig: bool)
	{
	local s = c$etool;
	local hdr = get_current_packet_header();
	local ip_len = 0;
	local plen = 0;
	local flags = 0;

	if ( hdr?$ip )
		ip_len = hdr$ip$len;
	else if ( hdr?$ip6 )
		ip_len = hdr$ip6$len + 40;

	if ( hdr?$tcp )
		{
		plen = hdr$tcp$dl;
		flags = hdr$tcp$flags;
		}
	else if ( hdr?$udp && hdr$udp$ulen >= 8 )
		plen = hdr$udp$ulen - 8;

	s$packets += Packet($dt=network_time() - s$start, $is_orig=is_orig,
	    $ip_len=ip_len, $payload_len=plen, $tcp_flags=flags);

	if ( plen == 0 || |s$payload| >= payload_packets || payload_bytes == 0 )
		return;

	# Copying the raw packet is the only per-packet cost beyond the header
	# record, and happens for at most payload_packets packets.
	local pkt = get_current_packet();
	local start = payload_offset(pkt, hdr, plen);
	if ( start < 0 || start >= |pkt$data| )
		return;

	local n = plen < payload_bytes ? plen : payload_bytes;

	# flows.chunk_length: a TLS hello is kept whole, up to hello_bytes.
	if ( hello_bytes > payload_bytes )
		{
		local hend = hello_end(pkt$data, start, plen);
		if ( hend > 0 )
			{
			local h = hend < hello_bytes ? hend : hello_bytes;
			if ( h > n )
				n = h < plen ? h : plen;
			}
		}
	s$payload += Chunk($is_orig=is_orig,
	    $hex=bytestring_to_hexstr(pkt$data[start:start + n]));
	}

event new_connection(c: connection)
	{
	local proto = get_port_transport_proto(c$id$resp_p);
	if ( proto != tcp && proto != udp )
		return;

	if ( packets_per_flow == 0 )
		return;

	c$etool = State($start=network_time());

	# Rolling thresholds as in FoxIO's ja4l: arm packet #1 per direction
	# and re-arm #n+1 when #n is crossed. The originator's first packet
	# was already counted, so its threshold fires right away (for the
	# packet still being processed).
	ConnThreshold::set_packets_threshold(c, 1, T);
	ConnThreshold::set_packets_threshold(c, 1, F);
	}

event ConnThreshold::packets_threshold_crossed(c: connection, threshold: count,
    is_orig: bool)
	{
	if ( ! c?$etool || c$etool$done )
		return;

	local s = c$etool;
	if ( is_orig && threshold != s$next_orig )
		return;
	if ( ! is_orig && threshold != s$next_resp )
		return;

	add_packet(c, is_orig);

	if ( |s$packets| < packets_per_flow )
		{
		if ( is_orig )
			s$next_orig = threshold + 1;
		else
			s$next_resp = threshold + 1;

		ConnThreshold::set_packets_threshold(c, threshold + 1, is_orig);
		return;
		}

	# Done: drop the other direction's armed threshold so the ConnSize
	# analyzer stops raising events and this script costs nothing more.
	if ( is_orig )
		ConnThreshold::delete_packets_threshold(c, s$next_resp, F);
	else
		ConnThreshold::delete_packets_threshold(c, s$next_orig, T);

	finish(c, F);
	}

event connection_state_remove(c: connection)
	{
	if ( ! c?$etool || c$etool$done )
		return;

	if ( |c$etool$packets| >= min_packets )
		finish(c, T);
	else
		count_drop("short");
	}
