# @TEST-DOC: ETooL::Daemon_Down when flows were published and no verdict came back for ETooL::daemon_down_after (network time of the trace: the flow is published 0.8 s in, the check at 16.8 s finds it 16 s old); one notice per topic, the later checks are suppressed.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-long-connection.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut note sub msg < notice.log > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 2;
redef ETooL::daemon_down_after = 10 sec;
redef ETooL::health_interval = 5 sec;
