"""The processes, each assembled in one place: the local operator (`local`), the cluster operator
(`cluster`) and the cluster's activator (`activator`), with what they share (`process`, `wakes`,
`health`, `logs`) and the `sdb` command line (`cli`). Nothing below this layer wires parts together.
"""
