##! ETooL: classify encrypted connections from their first packets.
##!
##! Workers (or a standalone Zeek) collect the first packets of every TCP/UDP
##! connection, publish one ETooL::flow event per connection to the
##! ``etool-sensor serve`` daemon(s) over Zeek's WebSocket API, and turn the
##! ETooL::verdict events that come back into etool.log rows and notices.
##! The wire contract is described in docs/zeek-wire.md.

@load base/frameworks/cluster
@load base/frameworks/notice
@load base/protocols/conn/thresholds

# Zeek >= 8.1 runs standalone with no cluster backend, and Cluster::publish()
# would go nowhere. Pick Broker there (no extra ports needed). If you prefer
# ZeroMQ, load frameworks/cluster/backend/zeromq before this package.
@ifdef ( Cluster::CLUSTER_BACKEND_NONE )
@if ( ! Cluster::is_enabled() && Cluster::backend == Cluster::CLUSTER_BACKEND_NONE )
@load frameworks/cluster/backend/broker
@endif
@endif

module ETooL;

export {
	## Version of the wire contract (records and events below). Bumped on
	## any change of field order or type; see docs/zeek-wire.md.
	const wire_version = 1;

	# ----- Wire contract v1: field order matters, records travel as vectors.

	## One packet of a connection.
	type Packet: record {
		dt: interval; ##< Time since the connection's first packet.
		is_orig: bool; ##< Sent by the originator.
		ip_len: count; ##< IP total length (IPv6: payload length + 40).
		payload_len: count; ##< Transport payload bytes.
		tcp_flags: count; ##< TCP flag bits (0 for UDP).
	};

	## The first bytes of a payload-carrying packet, hex-encoded.
	type Chunk: record {
		is_orig: bool;
		hex: string;
	};

	## What Zeek sends to the daemon, once per connection.
	type Flow: record {
		uid: string;
		ts: time;
		orig_h: addr;
		orig_p: port;
		resp_h: addr;
		resp_p: port;
		packets: vector of Packet;
		payload: vector of Chunk;
		final: bool; ##< T: the connection ended before packets_per_flow.
		reply_topic: string; ##< Where the daemon must publish the verdict.
	};

	## What the daemon sends back, on the flow's reply_topic.
	type Verdict: record {
		uid: string;
		service: string;
		app: string;
		confidence: double;
		unknown: bool;
		alternatives: vector of string;
		model: string;
	};

	## Zeek -> daemon.
	global flow: event(f: Flow);
	## Daemon -> Zeek.
	global verdict: event(v: Verdict);

	# ----- Collection.

	## Packets (both directions) collected per connection.
	const packets_per_flow = 32 &redef;
	## Bytes of transport payload kept per payload-carrying packet.
	const payload_bytes = 64 &redef;
	## Number of payload-carrying packets whose bytes are kept.
	const payload_packets = 3 &redef;
	## A kept chunk that starts a TLS ClientHello or ServerHello keeps that
	## whole hello, up to this many bytes, so the model can read its cipher
	## suites and extension types (never its names). 0: cut at payload_bytes
	## like any other chunk. The default model reads hellos up to 1024.
	const hello_bytes = 1024 &redef;
	## Connections that end with fewer packets than this are not published.
	const min_packets = 2 &redef;

	# ----- Publishing.

	## Topic prefix for flow events.
	const flow_topic = "etool/flows/" &redef;
	## Topic prefix for verdicts; the node appends its name.
	const verdict_topic = "etool/verdicts/" &redef;
	## Daemon names. Empty: publish everything to flow_topic. Otherwise
	## each connection goes to flow_topic + name + "/", chosen by
	## rendezvous (HRW) hashing of the originator address, so one client's
	## flows always reach the same daemon.
	const daemons: vector of string = vector() &redef;
	## Flows waiting for a verdict longer than this get a "timeout" row.
	const verdict_timeout = 30 sec &redef;

	## Hook called before a flow is published; break to drop it.
	global flow_policy: hook(f: Flow);

	# ----- WebSocket listener (standalone node or cluster manager).

	## Call Cluster::listen_websocket on the standalone node / manager.
	const listen_websocket = T &redef;
	## Address to listen on. Keep loopback unless you add TLS and a firewall.
	const websocket_addr = 127.0.0.1 &redef;
	## Port; 27759 is Zeek's own default, so zeekctl's UseWebSocket=1
	## listener (same options) is reused rather than conflicting.
	const websocket_port = 27759/tcp &redef;
	## TLS for the listener: set cert_file and key_file to enable.
	const websocket_tls = Cluster::WebSocketTLSOptions() &redef;

	# ----- Alerts.

	redef enum Notice::Type += {
		## A connection was classified as a label in alert_labels.
		Alert,
	};

	## Service or app labels that raise ETooL::Alert.
	const alert_labels: set[string] = set() &redef;
	## Minimum confidence per label for an alert.
	const label_thresholds: table[string] of double = table() &redef;
	## Minimum confidence for labels missing from label_thresholds.
	const default_threshold = 0.8 &redef;

	# ----- Logging.

	redef enum Log::ID += { LOG };
	global log_policy: Log::PolicyHook;

	type Info: record {
		ts: time &log; ##< First packet of the connection.
		uid: string &log;
		id: conn_id &log;
		proto: transport_proto &log;
		service: string &log &optional;
		app: string &log &optional;
		confidence: double &log &optional;
		unknown: bool &log &optional;
		alternatives: vector of string &log &optional;
		model: string &log &optional;
		## From publishing the flow to the verdict (or the timeout).
		latency: interval &log &optional;
		## "ok" or "timeout".
		status: string &log;
	};

	global log_etool: event(rec: Info);

	## Verdicts for uids with no pending flow (late or foreign).
	global unknown_verdicts = 0;

	## Number of published flows still waiting for a verdict.
	global pending_flows: function(): count;

	## The daemon (from daemons) that flows of this originator go to.
	global pick_daemon: function(h: addr): string;
}

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

## A published flow waiting for its verdict.
type Pending: record {
	ts: time;
	id: conn_id;
	sent: time;
};

global reply_topic = "";
global daemon_ids: vector of count = vector();

function log_row(uid: string, p: Pending, status: string): Info
	{
	return Info($ts=p$ts, $uid=uid, $id=p$id,
	    $proto=get_port_transport_proto(p$id$resp_p),
	    $latency=network_time() - p$sent, $status=status);
	}

function expire_pending(t: table[string] of Pending, uid: string): interval
	{
	Log::write(LOG, log_row(uid, t[uid], "timeout"));
	return 0 secs;
	}

global pending: table[string] of Pending &create_expire=verdict_timeout
    &expire_func=expire_pending;

function pending_flows(): count
	{
	return |pending|;
	}

## Rendezvous hashing: the daemon with the highest weight for this host.
function pick_daemon(h: addr): string
	{
	local key = fnv1a32(h);
	local best = 0;
	local best_w = 0;

	for ( i in daemons )
		{
		local w = hrw_weight(key, daemon_ids[i]);
		if ( i == 0 || w > best_w )
			{
			best = i;
			best_w = w;
			}
		}

	return daemons[best];
	}

function publish(c: connection, final: bool)
	{
	local s = c$etool;
	s$done = T;

	local f = Flow($uid=c$uid, $ts=s$start, $orig_h=c$id$orig_h,
	    $orig_p=c$id$orig_p, $resp_h=c$id$resp_h, $resp_p=c$id$resp_p,
	    $packets=s$packets, $payload=s$payload, $final=final,
	    $reply_topic=reply_topic);

	if ( ! hook flow_policy(f) )
		return;

	pending[c$uid] = Pending($ts=s$start, $id=c$id, $sent=network_time());

	local topic = flow_topic;
	if ( |daemons| > 0 )
		topic = flow_topic + pick_daemon(c$id$orig_h) + "/";

	Cluster::publish(topic, flow, f);
	}

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
		local l3 = -1;

		while ( off + 2 <= |data| )
			{
			local etype = bytestring_to_count(data[off:off + 2]);
			if ( etype == 0x8100 || etype == 0x88a8 || etype == 0x9100 )
				off += 4;
			else
				{
				if ( etype == 0x0800 || etype == 0x86dd )
					l3 = off + 2;
				break;
				}
			}

		if ( l3 >= 0 && l3 + 6 <= |data| )
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

	publish(c, F);
	}

event connection_state_remove(c: connection)
	{
	if ( ! c?$etool || c$etool$done )
		return;

	if ( |c$etool$packets| >= min_packets )
		publish(c, T);
	}

function alert_threshold(label: string): double
	{
	return label in label_thresholds ? label_thresholds[label] : default_threshold;
	}

event ETooL::verdict(v: Verdict)
	{
	if ( v$uid !in pending )
		{
		++unknown_verdicts;
		Reporter::net_weird("etool_verdict_for_unknown_uid");
		return;
		}

	local p = pending[v$uid];
	delete pending[v$uid];

	local rec = log_row(v$uid, p, "ok");
	rec$service = v$service;
	rec$app = v$app;
	rec$confidence = v$confidence;
	rec$unknown = v$unknown;
	rec$alternatives = v$alternatives;
	rec$model = v$model;
	Log::write(LOG, rec);

	if ( v$unknown )
		return;

	for ( label in set(v$service, v$app) )
		{
		if ( label !in alert_labels || v$confidence < alert_threshold(label) )
			next;

		NOTICE([$note=Alert, $uid=v$uid, $id=p$id,
		    $msg=fmt("connection classified as %s (service=%s app=%s, confidence %.2f, model %s)",
		        label, v$service, v$app, v$confidence, v$model),
		    $sub=label,
		    $identifier=cat(p$id$orig_h, p$id$resp_h, label)]);
		break;
		}
	}

event zeek_init() &priority=5
	{
	Log::create_stream(LOG, [$columns=Info, $ev=log_etool, $path="etool",
	    $policy=log_policy]);

	for ( i in daemons )
		daemon_ids += fnv1a32(daemons[i]);

	local node = Cluster::is_enabled() ? Cluster::node : "standalone";
	reply_topic = verdict_topic + node + "/";

	if ( ! Cluster::is_enabled() ||
	     Cluster::local_node_type() == Cluster::WORKER )
		Cluster::subscribe(reply_topic);

	if ( listen_websocket && ( ! Cluster::is_enabled() ||
	     Cluster::local_node_type() == Cluster::MANAGER ) )
		{
		local opts = Cluster::WebSocketServerOptions($listen_addr=websocket_addr,
		    $listen_port=websocket_port, $tls_options=websocket_tls);
		if ( ! Cluster::listen_websocket(opts) )
			Reporter::error(fmt("ETooL: cannot listen for WebSocket clients on %s:%s",
			    websocket_addr, websocket_port));
		}
	}

# Flows still waiting at shutdown get a timeout row, so none go missing.
event zeek_done()
	{
	for ( uid, p in pending )
		Log::write(LOG, log_row(uid, p, "timeout"));

	clear_table(pending);
	}
