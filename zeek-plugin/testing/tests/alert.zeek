# @TEST-DOC: A verdict for a label in ETooL::alert_labels above its threshold raises ETooL::Alert; one below it does not.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut note sub id.orig_h id.resp_h < notice.log > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 8;
redef ETooL::alert_labels += { "google", "tls" };
redef ETooL::label_thresholds += { ["google"] = 0.9, ["tls"] = 0.99 };

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	# "tls" is below its 0.99 threshold, "google" above its 0.9.
	event ETooL::verdict(ETooL::Verdict($uid=f$uid, $service="tls", $app="google",
	    $confidence=0.95, $unknown=F, $alternatives=vector(), $model="test-model"));
	}
