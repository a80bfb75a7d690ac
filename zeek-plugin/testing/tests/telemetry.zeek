# @TEST-DOC: The Telemetry counters: flows sent and verdicts per topic, an unmatched verdict (tls-ecdhe with a faked answer); a flow vetoed by ETooL::flow_policy and a connection below ETooL::min_packets (dns-binds); flows that timed out, also at shutdown (dns-binds without answers).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT ETOOL_CASE=answered > output
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-binds.pcap $PACKAGE %INPUT ETOOL_CASE=policy >> output
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-binds.pcap $PACKAGE %INPUT ETOOL_CASE=short ETooL::min_packets=3 >> output
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-binds.pcap $PACKAGE %INPUT ETOOL_CASE=timeout >> output
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 8;

const ETOOL_CASE = "" &redef;

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	if ( ETOOL_CASE == "policy" )
		break;

	if ( ETOOL_CASE != "answered" )
		return;

	event ETooL::verdict(ETooL::Verdict($uid=f$uid, $service="Web", $app="Google",
	    $confidence=0.97, $unknown=F, $alternatives=vector(), $model="test-model"));
	event ETooL::verdict(ETooL::Verdict($uid="Cnotpending", $service="Web",
	    $app="Google", $confidence=0.5, $unknown=T, $alternatives=vector(),
	    $model="test-model"));
	}

event zeek_done() &priority=-10
	{
	local lines: vector of string;
	local names = vector("etool_flows_sent", "etool_verdicts", "etool_timeouts", "etool_drops");
	for ( i in names )
		for ( _, m in Telemetry::collect_metrics("zeek", names[i] + "*") )
			lines += fmt("%s{%s} %.0f", names[i], join_string_vec(m$label_values, ","), m$value);
	sort(lines, strcmp);

	print fmt("case %s", ETOOL_CASE);
	for ( _, l in lines )
		print fmt("  %s", l);
	}
