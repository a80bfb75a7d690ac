# @TEST-DOC: A verdict (faked locally, as if the daemon had sent it) becomes an etool.log row with status ok; a verdict for an unknown uid is counted (zeek_etool_drops_total{reason="unmatched_verdict"}) and ignored.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: zeek-cut id.orig_h id.orig_p id.resp_h id.resp_p proto service app unknown alternatives model status < etool.log > etool.cut
# @TEST-EXEC: zeek-cut uid confidence latency < etool.log | awk '{print (length($1) > 0), ($2 > 0.969 && $2 < 0.971), ($3 == 0)}' >> output
# @TEST-EXEC: btest-diff etool.cut
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 8;

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	event ETooL::verdict(ETooL::Verdict($uid=f$uid, $service="tls", $app="google",
	    $confidence=0.97, $unknown=F, $alternatives=vector("youtube", "gmail"),
	    $model="test-model"));
	event ETooL::verdict(ETooL::Verdict($uid="Cnotpending", $service="tls",
	    $app="x", $confidence=0.5, $unknown=T, $alternatives=vector(),
	    $model="test-model"));
	}

function unmatched_verdicts(): double
	{
	local n = 0.0;
	for ( _, m in Telemetry::collect_metrics("zeek", "etool_drops*") )
		if ( m$label_values[0] == "unmatched_verdict" )
			n += m$value;
	return n;
	}

event zeek_done()
	{
	print fmt("unknown verdicts=%.0f pending=%d", unmatched_verdicts(), ETooL::pending_flows());
	}
