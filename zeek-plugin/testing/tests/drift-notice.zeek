# @TEST-DOC: ETooL::drift (wire v2) raises ETooL::Drift at or above ETooL::drift_threshold, once per daemon per ETooL::drift_notice_interval; the threshold changes at run time (Config framework); every score lands in the zeek_etool_drift_score{daemon} gauge.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: zeek-cut note sub n msg < notice.log > notice.cut
# @TEST-EXEC: btest-diff output
# @TEST-EXEC: btest-diff notice.cut

@load base/frameworks/config

redef ETooL::listen_websocket = F;

global raise_threshold: event();

function mk_drift(daemon: string, score: double, table_hit: double): ETooL::DriftReport
	{
	return ETooL::DriftReport($daemon=daemon, $model="etool-default@0.8.1", $score=score,
	    $label_shift=score, $confidence_shift=0.12, $unknown_rate=0.45,
	    $unknown_rate_ref=0.31, $table_hit_rate=table_hit,
	    $table_hit_rate_ref=table_hit < 0.0 ? -1.0 : 0.42, $flows=500);
	}

event raise_threshold()
	{
	Config::set_value("ETooL::drift_threshold", 0.6);
	}

event new_connection(c: connection)
	{
	print fmt("wire_version=%d", ETooL::wire_version);
	event ETooL::drift(mk_drift("etool-a", 0.45, 0.20));
	event ETooL::drift(mk_drift("etool-a", 0.50, 0.20)); # suppressed: same daemon
	event ETooL::drift(mk_drift("etool-b", 0.20, 0.40)); # below 0.3
	event ETooL::drift(mk_drift("etool-c", 0.35, -1.0)); # no fingerprint table
	event raise_threshold();
	event ETooL::drift(mk_drift("etool-d", 0.50, 0.30)); # below 0.6 now
	}

event zeek_done()
	{
	local lines: vector of string;
	for ( _, m in Telemetry::collect_metrics("zeek", "etool_drift_score*") )
		lines += fmt("drift_score %s %.2f", join_string_vec(m$label_values, ","), m$value);
	sort(lines, strcmp);
	for ( _, l in lines )
		print l;
	}
