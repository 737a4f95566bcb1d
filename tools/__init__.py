"""Generators for the files the repository keeps in step with the code, and their staleness checks.

Each module turns one source of truth into text, with no I/O of its own: `rbac` the permission table
into the chart's RBAC rules, `crd_reference` the CRD's schema into docs/crd-reference.md,
`metrics_reference` the operator's metrics into docs/metrics.md, `values_reference` the chart's
values schema into docs/helm-values.md, and `install_manifest` the rendered chart into
manifests/install.yaml. `generate` lists every output, writes them and checks them
(`python -m tools --check`); the tests run the same check.
"""
