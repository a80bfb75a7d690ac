# @TEST-DOC: Flows without a verdict get an etool.log row with status timeout (via &create_expire/&expire_func, or at shutdown).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-long-connection.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: zeek-cut status < etool.log | sort -u >> output
# @TEST-EXEC: zeek-cut service app model < etool.log | sort -u >> output
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 2;
redef ETooL::verdict_timeout = 1sec;

global expired_early = F;

event ETooL::log_etool(rec: ETooL::Info)
	{
	# The first flow is published 0.8 s into the 267 s trace, so its row
	# comes from the table expiring it, long before the trace ends.
	if ( rec$status == "timeout" && rec$latency >= 1sec && rec$latency < 60sec )
		expired_early = T;
	}

event zeek_done() &priority=-10
	{
	print fmt("expired before shutdown=%s pending=%d", expired_early, ETooL::pending_flows());
	}
