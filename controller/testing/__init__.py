"""In-package test doubles shared by tests and the simulator."""
