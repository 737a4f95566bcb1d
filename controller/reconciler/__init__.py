"""The reconciler: reads objects, asks the policy, drives a runtime, and alone writes status and events.

`loop` runs it; `status` turns a plan and its outcome into status, conditions and events, and chains
a pass's immediate steps (`advance`, pure: the simulator replays with it); `queue` is the work queue
of database keys.
"""
