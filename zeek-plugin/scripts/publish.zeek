##! Publishing: one ETooL::flow per connection to the daemon chosen by
##! rendezvous (HRW) hashing, the table of flows waiting for their verdict,
##! and matching the ETooL::verdict events that come back.

@load base/frameworks/cluster
@load ./config
@load ./types
@load ./metrics

# Zeek >= 8.1 runs standalone with no cluster backend, and Cluster::publish()
# would go nowhere. Pick Broker there (no extra ports needed). If you prefer
# ZeroMQ, load frameworks/cluster/backend/zeromq before this package.
@ifdef ( Cluster::CLUSTER_BACKEND_NONE )
@if ( ! Cluster::is_enabled() && Cluster::backend == Cluster::CLUSTER_BACKEND_NONE )
@load frameworks/cluster/backend/broker
@endif
@endif

module ETooL;

export {
	## A published flow waiting for its verdict.
	type Pending: record {
		ts: time; ##< First packet of the connection.
		id: conn_id;
		sent: time; ##< When the flow was published.
		topic: string; ##< The flow topic it was published on.
	};

	## Hook called before a flow is published; break to drop it.
	global flow_policy: hook(f: Flow);

	## Called once for each flow after it was published on topic.
	## Handlers must not break.
	global flow_sent: hook(f: Flow, topic: string);

	## Called once for each published flow whose verdict arrived, before the
	## flow leaves the pending table. etool.log, alerts and the health
	## checks handle it; handlers must not break.
	global flow_answered: hook(v: Verdict, p: Pending);

	## Called once for each published flow that got no verdict within
	## verdict_timeout (shutdown=F), or was still waiting when Zeek shut
	## down (shutdown=T). Handlers must not break.
	global flow_timeout: hook(uid: string, p: Pending, shutdown: bool);

	## Number of published flows still waiting for a verdict.
	global pending_flows: function(): count;

	## The daemon (from daemons) that flows of this originator go to.
	global pick_daemon: function(h: addr): string;
}

## The topic verdicts for this node's flows come back on.
global reply_topic = "";
global daemon_ids: vector of count = vector();

function expire_pending(t: table[string] of Pending, uid: string): interval
	{
	hook flow_timeout(uid, t[uid], F);
	return 0 secs;
	}

global pending: table[string] of Pending &create_expire=verdict_timeout
    &expire_func=expire_pending;

function pending_flows(): count
	{
	return |pending|;
	}

## Rendezvous hashing: the daemon with the highest weight for this host.
function pick_daemon(h: addr): string
	{
	local key = fnv1a32(h);
	local best = 0;
	local best_w = 0;

	for ( i in daemons )
		{
		local w = hrw_weight(key, daemon_ids[i]);
		if ( i == 0 || w > best_w )
			{
			best = i;
			best_w = w;
			}
		}

	return daemons[best];
	}

## Publishes the flow collected for c (called by collect.zeek).
function publish(c: connection, packets: vector of Packet,
    payload: vector of Chunk, start: time, final: bool)
	{
	local f = Flow($uid=c$uid, $ts=start, $orig_h=c$id$orig_h,
	    $orig_p=c$id$orig_p, $resp_h=c$id$resp_h, $resp_p=c$id$resp_p,
	    $packets=packets, $payload=payload, $final=final,
	    $reply_topic=reply_topic);

	if ( ! hook flow_policy(f) )
		{
		count_drop("policy");
		return;
		}

	local topic = flow_topic;
	if ( |daemons| > 0 )
		topic = flow_topic + pick_daemon(c$id$orig_h) + "/";

	pending[c$uid] = Pending($ts=start, $id=c$id, $sent=network_time(),
	    $topic=topic);

	Cluster::publish(topic, flow, f);
	count_sent(topic);
	hook flow_sent(f, topic);
	}

event ETooL::verdict(v: Verdict)
	{
	if ( v$uid !in pending )
		{
		count_drop("unmatched_verdict");
		Reporter::net_weird("etool_verdict_for_unknown_uid");
		return;
		}

	local p = pending[v$uid];
	count_verdict(p$topic);
	hook flow_answered(v, p);
	delete pending[v$uid];
	}

hook flow_timeout(uid: string, p: Pending, shutdown: bool) &priority=100
	{
	count_timeout(p$topic);
	}

event zeek_init() &priority=5
	{
	for ( i in daemons )
		daemon_ids += fnv1a32(daemons[i]);

	local node = Cluster::is_enabled() ? Cluster::node : "standalone";
	reply_topic = verdict_topic + node + "/";

	if ( ! Cluster::is_enabled() ||
	     Cluster::local_node_type() == Cluster::WORKER )
		Cluster::subscribe(reply_topic);
	}

# Flows still waiting at shutdown get a timeout row, so none go missing.
event zeek_done()
	{
	for ( uid, p in pending )
		hook flow_timeout(uid, p, T);

	clear_table(pending);
	}
