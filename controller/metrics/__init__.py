"""Where observations come from, and the operator's own metrics.

`source` is the interface; `postgres` reads Postgres's statistics over a tagged session, with CPU and
memory from a function its assembly hands in; `prometheus` reads cAdvisor's and the exporter
sidecar's series for a whole fleet in one query per metric; `counters` turns counters into rates
for both; `exposition` is the operator's own /metrics.
"""
