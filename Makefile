# Conveniences over ./dev; the README's two commands need nothing but bash.
CHART := charts/serverless-db-operator
CRD := $(CHART)/crds/serverlessdatabases.dbscale.io.yaml
TOOLS := .cache/tools

.PHONY: up test setup manifests e2e bench

up:
	./dev up

test:
	./dev test

setup:
	./dev setup

manifests: manifests/crd.yaml manifests/install.yaml

manifests/crd.yaml: $(CRD)
	{ echo "# Generated from $(CRD) by 'make manifests'; edit that file, not this one."; cat $(CRD); } > $@

manifests/install.yaml: $(CRD) $(shell find $(CHART) -type f)
	./dev setup
	{ echo "# Generated from $(CHART) with default values by 'make manifests'; edit the chart, not this file."; \
	  $(TOOLS)/helm template serverless-db-operator $(CHART) --namespace sdb-system --include-crds; } > $@

e2e:
	tests/e2e/run.sh

bench:
	.venv/bin/python bench/wake_latency.py --cycles 20
	.venv/bin/python bench/proxy_overhead.py
	.venv/bin/python bench/simulate.py
