##! Daemon health seen from Zeek: ETooL::Daemon_Down when the daemon(s)
##! behind a flow topic stop answering, time out too often, or disconnect.
##!
##! Each node that publishes flows (workers, or a standalone Zeek) checks
##! every health_interval, per flow topic:
##!
##! * flows were published and none got a verdict for daemon_down_after;
##! * more than timeout_share of the flows that finished in the interval
##!   timed out (with at least timeout_min_flows finished).
##!
##! The node that hosts the WebSocket listener (standalone, or the cluster
##! manager) also watches Cluster::websocket_client_added and
##! Cluster::websocket_client_lost: a client is a daemon if it subscribed
##! to a topic under flow_topic, and losing the last daemon subscribed to a
##! topic raises the notice at once. Notices for one topic are suppressed
##! for daemon_down_notice_interval, whichever check raised them.

@load base/frameworks/cluster
@load base/frameworks/notice
@load ./config
@load ./metrics
@load ./publish

module ETooL;

export {
	redef enum Notice::Type += {
		## The daemon(s) behind a flow topic stopped answering, time out
		## too often, or disconnected. ``sub`` is the flow topic.
		Daemon_Down,
	};

	## Flow topics of the WebSocket clients that are daemons, by endpoint id
	## (on the node that hosts the listener).
	global daemon_clients: table[string] of set[string];
}

## Per flow topic, what the health checks look at.
type Health: record {
	## Network time of the oldest flow published since the last verdict.
	waiting_since: time &optional;
	## Flows published since the last verdict.
	waiting: count &default=0;
	## Verdicts in the current interval.
	answered: count &default=0;
	## Timeouts in the current interval.
	timeouts: count &default=0;
};

global health: table[string] of Health;
global check_scheduled = F;

global health_check: event();

function daemon_down(topic: string, msg: string)
	{
	NOTICE([$note=Daemon_Down, $msg=msg, $sub=topic, $identifier=topic,
	    $suppress_for=daemon_down_notice_interval]);
	}

function topic_health(topic: string): Health
	{
	if ( topic !in health )
		health[topic] = Health();

	return health[topic];
	}

hook flow_sent(f: Flow, topic: string)
	{
	local h = topic_health(topic);
	if ( ! h?$waiting_since )
		h$waiting_since = network_time();
	++h$waiting;

	# The first flow starts the periodic check, so it runs on network time
	# (a trace's, when reading one).
	if ( ! check_scheduled )
		{
		check_scheduled = T;
		schedule health_interval { health_check() };
		}
	}

event Cluster::websocket_client_added(endpoint: Cluster::EndpointInfo,
    subscriptions: string_vec)
	{
	local topics: set[string];
	for ( _, t in subscriptions )
		if ( starts_with(t, flow_topic) )
			add topics[t];

	if ( |topics| == 0 )
		return;

	daemon_clients[endpoint$id] = topics;
	Telemetry::gauge_set(Telemetry::gauge_with(daemons_gf), 0.0 + |daemon_clients|);
	}

event Cluster::websocket_client_lost(endpoint: Cluster::EndpointInfo, code: count,
    reason: string)
	{
	if ( endpoint$id !in daemon_clients )
		return;

	local topics = daemon_clients[endpoint$id];
	delete daemon_clients[endpoint$id];
	Telemetry::gauge_set(Telemetry::gauge_with(daemons_gf), 0.0 + |daemon_clients|);

	local name = endpoint?$application_name ? endpoint$application_name : endpoint$id;

	for ( t in topics )
		{
		# A daemon subscribed to a prefix of t (e.g. flow_topic itself)
		# still receives t's flows.
		local covered = F;
		for ( eid, others in daemon_clients )
			for ( o in others )
				if ( starts_with(t, o) )
					covered = T;

		if ( ! covered )
			daemon_down(t, fmt("daemon %s disconnected (code %d: %s); no daemon is subscribed to %s",
			    name, code, reason, t));
		}
	}

hook flow_answered(v: Verdict, p: Pending) &priority=5
	{
	local h = topic_health(p$topic);
	delete h$waiting_since;
	h$waiting = 0;
	++h$answered;
	}

hook flow_timeout(uid: string, p: Pending, shutdown: bool) &priority=5
	{
	if ( shutdown )
		return;

	local h = topic_health(p$topic);
	++h$timeouts;
	}

event health_check()
	{
	for ( topic, h in health )
		{
		if ( daemon_down_after > 0 secs && h?$waiting_since &&
		     network_time() - h$waiting_since >= daemon_down_after )
			daemon_down(topic, fmt("no verdict within %s for flows published to %s (%d sent since the last verdict)",
			    daemon_down_after, topic, h$waiting));

		local finished = h$answered + h$timeouts;
		if ( finished > 0 && finished >= timeout_min_flows &&
		     h$timeouts > timeout_share * finished )
			daemon_down(topic, fmt("%d of %d flows published to %s timed out within %s",
			    h$timeouts, finished, topic, health_interval));

		h$answered = 0;
		h$timeouts = 0;
		}

	schedule health_interval { health_check() };
	}
