# Conveniences over ./dev; the README's two commands need nothing but bash.
.PHONY: up test setup manifests docs e2e bench

up:
	./dev up

test:
	./dev test

setup:
	./dev setup

# Every generated file: manifests/crd.yaml and install.yaml, the chart's RBAC rules, the reference docs.
manifests docs:
	./dev setup
	.venv/bin/python -m tools

e2e:
	tests/e2e/run.sh

bench:
	.venv/bin/python bench/wake_latency.py --cycles 20
	.venv/bin/python bench/proxy_overhead.py
	.venv/bin/python bench/identity.py
	.venv/bin/python bench/simulate.py
