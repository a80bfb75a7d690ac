##! ETooL's counters and gauges in Zeek's Telemetry framework, exported on
##! Zeek's Prometheus endpoint (``Telemetry::metrics_port``; in a cluster
##! each node's metrics port) next to Zeek's own ``zeek_*`` metrics:
##!
##! * ``zeek_etool_flows_sent_total{topic}``: flows published;
##! * ``zeek_etool_verdicts_total{topic}``: verdicts matched to a published flow;
##! * ``zeek_etool_timeouts_total{topic}``: flows that got no verdict in time;
##! * ``zeek_etool_drops_total{reason}``: flows not published (``policy``:
##!   vetoed by ETooL::flow_policy; ``short``: fewer than min_packets) and
##!   verdicts for no pending flow (``unmatched_verdict``: late, duplicate or
##!   sent to the wrong node);
##! * ``zeek_etool_daemons_connected``: WebSocket clients subscribed to a flow
##!   topic (on the node that hosts the listener);
##! * ``zeek_etool_drift_score{daemon}``: the last drift score each daemon sent.
##!
##! ``topic`` is the flow topic (one per daemon in ETooL::daemons), so every
##! label set is bounded by the configuration.

@load base/frameworks/telemetry

module ETooL;

export {
	## Counts a flow published on topic.
	global count_sent: function(topic: string);
	## Counts a verdict for a flow published on topic.
	global count_verdict: function(topic: string);
	## Counts a flow published on topic that timed out.
	global count_timeout: function(topic: string);
	## Counts a drop (``policy``, ``short`` or ``unmatched_verdict``).
	global count_drop: function(reason: string);
}

global sent_cf = Telemetry::register_counter_family(Telemetry::MetricOpts(
    $prefix="zeek", $name="etool_flows_sent", $unit="",
    $help_text="Flows published to the etool daemons", $label_names=vector("topic")));

global verdicts_cf = Telemetry::register_counter_family(Telemetry::MetricOpts(
    $prefix="zeek", $name="etool_verdicts", $unit="",
    $help_text="Verdicts received for published flows", $label_names=vector("topic")));

global timeouts_cf = Telemetry::register_counter_family(Telemetry::MetricOpts(
    $prefix="zeek", $name="etool_timeouts", $unit="",
    $help_text="Published flows without a verdict within ETooL::verdict_timeout",
    $label_names=vector("topic")));

global drops_cf = Telemetry::register_counter_family(Telemetry::MetricOpts(
    $prefix="zeek", $name="etool_drops", $unit="",
    $help_text="Flows not published and verdicts matching no published flow",
    $label_names=vector("reason")));

global daemons_gf = Telemetry::register_gauge_family(Telemetry::MetricOpts(
    $prefix="zeek", $name="etool_daemons_connected", $unit="",
    $help_text="WebSocket clients subscribed to an etool flow topic"));

global drift_gf = Telemetry::register_gauge_family(Telemetry::MetricOpts(
    $prefix="zeek", $name="etool_drift_score", $unit="",
    $help_text="Last drift score sent by each etool daemon", $label_names=vector("daemon")));

# Counter handles per label value, so the per-flow cost is one table lookup.
global sent_c: table[string] of Telemetry::Counter;
global verdicts_c: table[string] of Telemetry::Counter;
global timeouts_c: table[string] of Telemetry::Counter;
global drops_c: table[string] of Telemetry::Counter;

function count_sent(topic: string)
	{
	if ( topic !in sent_c )
		sent_c[topic] = Telemetry::counter_with(sent_cf, vector(topic));

	Telemetry::counter_inc(sent_c[topic]);
	}

function count_verdict(topic: string)
	{
	if ( topic !in verdicts_c )
		verdicts_c[topic] = Telemetry::counter_with(verdicts_cf, vector(topic));

	Telemetry::counter_inc(verdicts_c[topic]);
	}

function count_timeout(topic: string)
	{
	if ( topic !in timeouts_c )
		timeouts_c[topic] = Telemetry::counter_with(timeouts_cf, vector(topic));

	Telemetry::counter_inc(timeouts_c[topic]);
	}

function count_drop(reason: string)
	{
	if ( reason !in drops_c )
		drops_c[reason] = Telemetry::counter_with(drops_cf, vector(reason));

	Telemetry::counter_inc(drops_c[reason]);
	}
