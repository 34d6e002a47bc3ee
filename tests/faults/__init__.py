"""Fault-injection cases (issue #16): each injects one fault into a running node and checks
that no acknowledged instance is lost and that the admin can see the fault."""
