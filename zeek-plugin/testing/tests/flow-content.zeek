# @TEST-DOC: The ETooL::flow record for a two-packet DNS exchange, published at connection end (final=T).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-binds.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	print fmt("flow orig=%s:%s resp=%s:%s final=%s reply_topic=%s has_uid=%s",
	    f$orig_h, f$orig_p, f$resp_h, f$resp_p, f$final, f$reply_topic, |f$uid| > 0);

	for ( i in f$packets )
		{
		local p = f$packets[i];
		print fmt("packet %d dt=%.6f is_orig=%s ip_len=%d payload_len=%d tcp_flags=%d",
		    i, interval_to_double(p$dt), p$is_orig, p$ip_len, p$payload_len, p$tcp_flags);
		}

	for ( i in f$payload )
		print fmt("chunk %d is_orig=%s hex=%s", i, f$payload[i]$is_orig, f$payload[i]$hex);
	}
