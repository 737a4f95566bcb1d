"""Serverless Postgres: an operator that sizes, pauses, parks and wakes ServerlessDatabases.

Layers, each importing only those below it (the test command checks this, `lint-imports`):

    app          the processes, each assembled in one place, and the `sdb` command line
    reconciler   observe, ask the policy, act through a runtime, write status
    runtime      what changes the world (local | kubernetes)   metrics   where observations come from
    postgres     what both runtimes and the Postgres source share about talking to Postgres
    policy       the decisions, pure functions of spec, status, observation and time
    api          the ServerlessDatabase types        activator   the wake-on-connect proxy, sans backends
"""
