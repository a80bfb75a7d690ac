##! Every setting of the ETooL package, in one place.
##!
##! Settings an analyst tunes while Zeek runs (alert labels and thresholds,
##! the health and drift notices) are ``option``s: change them with
##! ``Config::set_value`` or a file in ``Config::config_files`` and the
##! next verdict, health check or drift event uses the new value (see
##! docs/sensor.md). Collection sizes must match what the daemon's model
##! reads, and topics, daemons and the listener are set up once at start,
##! so those stay ``const &redef`` (change them in local.zeek, then restart).

@load base/frameworks/cluster

module ETooL;

export {
	# ----- Collection (must match the model; restart to change).

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

	# ----- Publishing (set up at start).

	## Topic prefix for flow events.
	const flow_topic = "etool/flows/" &redef;
	## Topic prefix for verdicts; the node appends its name. Drift events
	## arrive on this prefix + "drift".
	const verdict_topic = "etool/verdicts/" &redef;
	## Daemon names. Empty: publish everything to flow_topic. Otherwise
	## each connection goes to flow_topic + name + "/", chosen by
	## rendezvous (HRW) hashing of the originator address, so one client's
	## flows always reach the same daemon.
	const daemons: vector of string = vector() &redef;
	## Flows waiting for a verdict longer than this get a "timeout" row.
	const verdict_timeout = 30 sec &redef;

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

	# ----- Alerts (options: change at run time).

	## Service or app labels that raise ETooL::Alert.
	option alert_labels: set[string] = set();
	## Per-label alert thresholds. By default a label in alert_labels
	## alerts when the verdict is not ``unknown``, i.e. when its confidence
	## cleared the daemon's ``classify.threshold`` (or its
	## ``classify.label_thresholds`` entry) in etool.yaml. A label listed
	## here alerts when the verdict's confidence is at least this value
	## instead, whatever ``unknown`` says.
	option label_thresholds: table[string] of double = table();
	## Repeats of ETooL::Alert for the same originator, responder and
	## label are suppressed for this long.
	option alert_notice_interval = 1 hr;

	# ----- Daemon health (options: change at run time).

	## Raise ETooL::Daemon_Down when flows were published to a daemon's
	## topic and none of them got a verdict for this long. 0 secs: off.
	option daemon_down_after = 1 min;
	## Raise ETooL::Daemon_Down when more than this share of the flows
	## that finished (verdict or timeout) in one health_interval timed out.
	option timeout_share = 0.5;
	## The timeout_share check needs at least this many finished flows in
	## the interval, so a handful of late verdicts on a quiet sensor does
	## not raise a notice.
	option timeout_min_flows = 10;
	## How often the health checks run (network time).
	option health_interval = 10 sec;
	## Repeats of ETooL::Daemon_Down for the same topic are suppressed for
	## this long.
	option daemon_down_notice_interval = 1 hr;

	# ----- Drift (options: change at run time).

	## An ETooL::drift event whose score is at least this raises
	## ETooL::Drift.
	option drift_threshold = 0.3;
	## Repeats of ETooL::Drift for the same daemon are suppressed for this
	## long.
	option drift_notice_interval = 1 hr;
}
