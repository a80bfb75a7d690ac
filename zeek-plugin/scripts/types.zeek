##! The wire contract between Zeek and the ``etool-sensor serve`` daemon:
##! the records and events that travel over Zeek's WebSocket API
##! (docs/zeek-wire.md). Records travel as vectors, so field order and
##! types are the contract: any change to them is a new wire version.

module ETooL;

export {
	## Version of the wire contract (records and events below). Bumped on
	## any change of field order or type or on a new event; see
	## docs/zeek-wire.md. Version 2 is version 1 plus ETooL::drift.
	const wire_version = 2;

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

	## How far a daemon's recent verdicts are from the reference statistics
	## its model package carries (wire v2). Sent by the daemon now and then
	## on verdict_topic + "drift". (Not named Drift: that is the notice
	## type ETooL::Drift, and a type and an enum value cannot share a name.)
	type DriftReport: record {
		daemon: string; ##< The daemon's app_name (<app_name>-i with --workers).
		model: string; ##< name@version of the package that answered the window.
		score: double; ##< Overall drift score 0..1 (0 = the reference, 1 = disjoint).
		label_shift: double; ##< Distance of the window's label shares from the reference's (0..1).
		confidence_shift: double; ##< Distance of the confidence histograms (0..1).
		unknown_rate: double; ##< Unknown share in the window.
		unknown_rate_ref: double; ##< Unknown share in the reference.
		table_hit_rate: double; ##< Fingerprint-table hit share in the window (-1 when no table).
		table_hit_rate_ref: double; ##< In the reference (-1 when no table).
		flows: count; ##< Verdicts in the window.
	};

	## Zeek -> daemon.
	global flow: event(f: Flow);
	## Daemon -> Zeek, on the flow's reply_topic.
	global verdict: event(v: Verdict);
	## Daemon -> Zeek, on verdict_topic + "drift" (wire v2).
	global drift: event(d: DriftReport);
}
