"""The decisions, as pure functions of spec, status, observations and the time handed in.

Nothing here reads a clock, opens a connection or keeps state between calls: `plan.decide` returns
a `Plan` (the next step, the capacity, a reason and a message), and the reconciler acts on it.
"""
