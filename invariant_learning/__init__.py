"""Invariant learning with annotation-free environments: clusters -> environments -> IRM."""
