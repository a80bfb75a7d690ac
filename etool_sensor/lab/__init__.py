"""The evaluation lab behind `etool-sensor eval`: splits, baselines, the teacher-logit cache, runners, metrics,
headroom and the report. With train/ and export/ it is the lab; the runtime (classify, serve) never imports it.
Without --splits, eval scores the shipped model on the base install (numpy and onnxruntime); splits and
methods need the `train` extra, imported only when used."""
