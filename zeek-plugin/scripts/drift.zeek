##! Drift (wire v2): the daemon compares a window of its recent verdicts
##! with the reference statistics its model package carries and sends
##! ETooL::drift on verdict_topic + "drift". A score at or above
##! drift_threshold raises ETooL::Drift, at most once per daemon per
##! drift_notice_interval; every score goes to the
##! zeek_etool_drift_score{daemon} gauge.

@load base/frameworks/cluster
@load base/frameworks/notice
@load ./config
@load ./types
@load ./metrics

module ETooL;

export {
	redef enum Notice::Type += {
		## A daemon's recent verdicts drifted from its model's reference
		## (the traffic no longer looks like what the model was built
		## on; see docs/sensor.md for what to do). ``sub`` is the daemon.
		Drift,
	};
}

event ETooL::drift(d: DriftReport)
	{
	Telemetry::gauge_set(Telemetry::gauge_with(drift_gf, vector(d$daemon)), d$score);

	if ( d$score < drift_threshold )
		return;

	local table_text = d$table_hit_rate < 0.0 ? "no fingerprint table" :
	    fmt("table hit rate %.2f (reference %.2f)", d$table_hit_rate, d$table_hit_rate_ref);

	NOTICE([$note=Drift, $sub=d$daemon, $n=d$flows, $identifier=d$daemon,
	    $suppress_for=drift_notice_interval,
	    $msg=fmt("daemon %s, model %s: drift score %.2f over %d verdicts (label shift %.2f, confidence shift %.2f, unknown rate %.2f (reference %.2f), %s)",
	        d$daemon, d$model, d$score, d$flows, d$label_shift, d$confidence_shift,
	        d$unknown_rate, d$unknown_rate_ref, table_text)]);
	}

event zeek_init() &priority=5
	{
	if ( ! Cluster::is_enabled() ||
	     Cluster::local_node_type() == Cluster::WORKER )
		Cluster::subscribe(verdict_topic + "drift");
	}
