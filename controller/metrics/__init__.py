"""Where observations come from (`source`): Postgres statistics plus cgroup or process counters on
this host (`local`), or Prometheus in a cluster (`prometheus`); and the operator's own metrics
(`exposition`), served on /metrics.
"""
