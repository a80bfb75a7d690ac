# @TEST-DOC: Collection stops at ETooL::packets_per_flow: the flow is published at packet N (final=F), the ConnThreshold thresholds are gone and no further threshold events fire.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 8;

global crossed = 0;

event ConnThreshold::packets_threshold_crossed(c: connection, threshold: count, is_orig: bool) &priority=-10
	{
	++crossed;
	}

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	print fmt("flow packets=%d final=%s chunks=%d", |f$packets|, f$final, |f$payload|);

	for ( i in f$packets )
		{
		local p = f$packets[i];
		print fmt("packet %d dt=%.6f is_orig=%s ip_len=%d payload_len=%d tcp_flags=%d",
		    i, interval_to_double(p$dt), p$is_orig, p$ip_len, p$payload_len, p$tcp_flags);
		}

	for ( i in f$payload )
		print fmt("chunk %d is_orig=%s hex=%s", i, f$payload[i]$is_orig, f$payload[i]$hex);
	}

event connection_state_remove(c: connection)
	{
	print fmt("conn packets orig=%d resp=%d", c$orig$num_pkts, c$resp$num_pkts);
	print fmt("thresholds left orig=%d resp=%d", |c$thresholds$orig_packet|, |c$thresholds$resp_packet|);
	print fmt("armed orig=%d resp=%d", get_current_conn_packets_threshold(c$id, T),
	    get_current_conn_packets_threshold(c$id, F));
	print fmt("threshold events=%d", crossed);
	}
