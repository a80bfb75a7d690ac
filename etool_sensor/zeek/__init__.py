"""Zeek's side of the sensor: broker_json (the Broker JSON data codec), messages (WebSocket v1 messages and
Zeek events on it), wire (the ETooL contract: ETooL::flow, verdict, drift) and client (the WebSocket session)."""
