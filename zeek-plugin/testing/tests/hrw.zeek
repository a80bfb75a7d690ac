# @TEST-DOC: With ETooL::daemons set, flows go to etool/flows/<daemon>/ chosen by rendezvous hashing on orig_h: stable per host, spread over daemons.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/dns-binds.pcap $PACKAGE %INPUT > output
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;
redef ETooL::daemons = vector("etool-a", "etool-b", "etool-c");

event zeek_done()
	{
	local used: set[string] = set();
	local stable = T;

	local i = 0;
	while ( i < 200 )
		{
		local h = count_to_v4_addr(167772160 + i * 7919);
		++i;
		local d = ETooL::pick_daemon(h);
		if ( d != ETooL::pick_daemon(h) )
			stable = F;
		add used[d];
		}

	print fmt("stable=%s daemons_used=%d", stable, |used|);
	}
