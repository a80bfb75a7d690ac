"""The sensor daemon, `etool-sensor serve`: classify the flows Zeek publishes over its WebSocket API.

Data flows down this list; nothing imports a module above it:

* ``serve``: the command's arguments and entry (cli.LAZY);
* ``supervisor``: ``serve --workers N``, N forked daemons and their merged metrics (``workermetrics``);
* ``process``: one daemon process: its configuration (etool.yaml, command-line overrides, a worker's
  share), model, event loop, signals and what SIGHUP reloads;
* ``daemon``: the daemon: decode -> context -> micro-batch -> infer -> publish, reload, drift;
* ``metrics``: its Prometheus series and the /metrics, /healthz endpoint;
* ``limits``: its rate limits (incoming flows, warnings);
* ``logfmt``: its log lines (text or JSON).
"""
