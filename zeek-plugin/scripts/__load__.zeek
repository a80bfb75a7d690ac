##! ETooL: classify encrypted connections from their first packets.
##!
##! Workers (or a standalone Zeek) collect the first packets of every TCP/UDP
##! connection, publish one ETooL::flow event per connection to the
##! ``etool-sensor serve`` daemon(s) over Zeek's WebSocket API, and turn the
##! ETooL::verdict events that come back into etool.log rows and notices.
##! The wire contract is described in docs/zeek-wire.md; the settings are
##! in config.zeek.

@load ./config
@load ./types
@load ./metrics
@load ./publish
@load ./collect
@load ./log
@load ./alerts
@load ./health
@load ./drift
@load ./listen
