# @TEST-DOC: No ETooL::Daemon_Down while every published flow gets its verdict (the same trace and settings as health-silent, with answers).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-long-connection.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: test ! -e notice.log
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 2;
redef ETooL::daemon_down_after = 10 sec;
redef ETooL::health_interval = 5 sec;

global answered = 0;

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	++answered;
	event ETooL::verdict(ETooL::Verdict($uid=f$uid, $service="Network", $app="DNS",
	    $confidence=0.9, $unknown=F, $alternatives=vector(), $model="test-model"));
	}

event zeek_done() &priority=-10
	{
	print fmt("answered=%s pending=%d", answered > 0, ETooL::pending_flows());
	}
