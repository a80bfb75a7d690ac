##! etool.log: one row per published connection, written when its verdict
##! arrives (status "ok") or when it times out (status "timeout").

@load ./types
@load ./publish

module ETooL;

export {
	redef enum Log::ID += { LOG };
	global log_policy: Log::PolicyHook;

	type Info: record {
		ts: time &log; ##< First packet of the connection.
		uid: string &log;
		id: conn_id &log;
		proto: transport_proto &log;
		service: string &log &optional;
		app: string &log &optional;
		confidence: double &log &optional;
		unknown: bool &log &optional;
		alternatives: vector of string &log &optional;
		model: string &log &optional;
		## From publishing the flow to the verdict (or the timeout).
		latency: interval &log &optional;
		## "ok" or "timeout".
		status: string &log;
	};

	global log_etool: event(rec: Info);
}

function log_row(uid: string, p: Pending, status: string): Info
	{
	return Info($ts=p$ts, $uid=uid, $id=p$id,
	    $proto=get_port_transport_proto(p$id$resp_p),
	    $latency=network_time() - p$sent, $status=status);
	}

hook flow_answered(v: Verdict, p: Pending) &priority=10
	{
	local rec = log_row(v$uid, p, "ok");
	rec$service = v$service;
	rec$app = v$app;
	rec$confidence = v$confidence;
	rec$unknown = v$unknown;
	rec$alternatives = v$alternatives;
	rec$model = v$model;
	Log::write(LOG, rec);
	}

hook flow_timeout(uid: string, p: Pending, shutdown: bool) &priority=10
	{
	Log::write(LOG, log_row(uid, p, "timeout"));
	}

event zeek_init() &priority=5
	{
	Log::create_stream(LOG, [$columns=Info, $ev=log_etool, $path="etool",
	    $policy=log_policy]);
	}
