# @TEST-DOC: By default a label in ETooL::alert_labels alerts when the verdict is not unknown (the daemon's classify.threshold decided); an ETooL::label_thresholds entry replaces that decision for its label; both options change at run time through the Config framework (config.log), and the next verdict uses the new values.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: zeek-cut note sub id.resp_h < notice.log > notice.cut
# @TEST-EXEC: zeek-cut id < config.log >> output
# @TEST-EXEC: btest-diff output
# @TEST-EXEC: btest-diff notice.cut

@load base/frameworks/config

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 8;
redef ETooL::alert_labels += { "Web" };

function check(service: string, app: string, confidence: double, unknown: bool)
	{
	local v = ETooL::Verdict($uid="Ctest", $service=service, $app=app,
	    $confidence=confidence, $unknown=unknown, $alternatives=vector(),
	    $model="test-model");
	print fmt("%s/%s confidence=%.2f unknown=%s -> alert=\"%s\"", service, app,
	    confidence, unknown, ETooL::alert_label(v));
	}

event zeek_init()
	{
	print "alert_labels={Web}, no label_thresholds";
	check("Web", "Google", 0.30, F);
	check("Web", "Google", 0.95, T);
	check("Chat", "Google", 0.99, F);

	Config::set_value("ETooL::label_thresholds", table(["Web"] = 0.9));
	print "label_thresholds={Web: 0.9}";
	check("Web", "Google", 0.95, T);
	check("Web", "Google", 0.50, F);

	Config::set_value("ETooL::alert_labels", set("Google"));
	print "alert_labels={Google}";
	check("Web", "Google", 0.50, F);
	check("Web", "Google", 0.50, T);
	}

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	# Below any 0.8 default, but not unknown: alerts on Google (set above).
	event ETooL::verdict(ETooL::Verdict($uid=f$uid, $service="Web", $app="Google",
	    $confidence=0.3, $unknown=F, $alternatives=vector(), $model="test-model"));
	}
