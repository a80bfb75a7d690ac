##! The WebSocket listener the daemons connect to: on a standalone Zeek or
##! on the cluster manager, never on workers, proxies or loggers.

@load base/frameworks/cluster
@load ./config

module ETooL;

event zeek_init() &priority=5
	{
	if ( ! listen_websocket )
		return;

	if ( Cluster::is_enabled() && Cluster::local_node_type() != Cluster::MANAGER )
		return;

	local opts = Cluster::WebSocketServerOptions($listen_addr=websocket_addr,
	    $listen_port=websocket_port, $tls_options=websocket_tls);
	if ( ! Cluster::listen_websocket(opts) )
		Reporter::error(fmt("ETooL: cannot listen for WebSocket clients on %s:%s",
		    websocket_addr, websocket_port));
	}
