# @TEST-DOC: A chunk that starts a TLS ClientHello or ServerHello keeps the whole hello up to ETooL::hello_bytes (here 100: the 164-byte ClientHello is cut at 100, the 66-byte ServerHello kept whole, the certificate chunk cut at payload_bytes); with hello_bytes = 0 every chunk is cut at payload_bytes. The same rule as flows.chunk_length (tests/test_hello_fields.py).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT ETooL::hello_bytes=100 > output
# @TEST-EXEC: zeek -b -C -r $TRACES/tls-ecdhe.pcap $PACKAGE %INPUT ETooL::hello_bytes=0 >> output
# @TEST-EXEC: btest-diff output

redef ETooL::listen_websocket = F;
redef ETooL::packets_per_flow = 8;

event zeek_init()
	{
	print fmt("hello_bytes=%d", ETooL::hello_bytes);
	}

hook ETooL::flow_policy(f: ETooL::Flow)
	{
	for ( i in f$payload )
		print fmt("chunk %d is_orig=%s len=%d hex=%s", i, f$payload[i]$is_orig,
		    |f$payload[i]$hex| / 2, f$payload[i]$hex);
	}
