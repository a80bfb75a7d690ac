# @TEST-DOC: Cluster::websocket_client_added/_lost (raised here as the listener would): clients subscribed under ETooL::flow_topic are daemons (zeek_etool_daemons_connected); losing the last daemon that covers a topic raises ETooL::Daemon_Down at once, losing one whose topic another daemon still covers (a prefix subscription) does not, and other clients are ignored.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: zeek-cut note sub msg < notice.log > notice.cut
# @TEST-EXEC: btest-diff output
# @TEST-EXEC: btest-diff notice.cut

redef ETooL::listen_websocket = F;

global step: event(s: string);

function ep(id: string, app: string): Cluster::EndpointInfo
	{
	return Cluster::EndpointInfo($id=id, $network=Cluster::NetworkInfo($address="127.0.0.1",
	    $bound_port=0/tcp), $application_name=app);
	}

function gauge(name: string): double
	{
	local total = 0.0;
	for ( _, m in Telemetry::collect_metrics("zeek", name + "*") )
		total += m$value;
	return total;
	}

event step(s: string)
	{
	print fmt("%s: daemons=%d gauge=%.0f", s, |ETooL::daemon_clients|,
	    gauge("etool_daemons_connected"));
	}

event new_connection(c: connection)
	{
	event Cluster::websocket_client_added(ep("ws-a", "etool-a"), vector("etool/flows/etool-a/"));
	event Cluster::websocket_client_added(ep("ws-b", "etool-b"), vector("etool/flows/etool-b/"));
	event Cluster::websocket_client_added(ep("ws-all", "etool-all"), vector("etool/flows/"));
	event Cluster::websocket_client_added(ep("ws-x", "other"), vector("other/topic/"));
	event step("four clients added");
	event Cluster::websocket_client_lost(ep("ws-x", "other"), 1000, "bye");
	event Cluster::websocket_client_lost(ep("ws-a", "etool-a"), 1000, "bye");
	event step("other and etool-a lost");
	event Cluster::websocket_client_lost(ep("ws-all", "etool-all"), 1006, "ping timeout");
	event Cluster::websocket_client_lost(ep("ws-b", "etool-b"), 1000, "bye");
	event step("all lost");
	}
