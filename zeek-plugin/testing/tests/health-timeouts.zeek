# @TEST-DOC: ETooL::Daemon_Down when more than ETooL::timeout_share of the flows that finished in one ETooL::health_interval timed out (the silence check is off here, daemon_down_after = 0).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-long-connection.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut note sub msg < notice.log > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 2;
redef ETooL::verdict_timeout = 1 sec;
redef ETooL::daemon_down_after = 0 secs;
redef ETooL::timeout_min_flows = 1;
redef ETooL::health_interval = 5 sec;
