"""Linking: the pure rules of DESIGN.md §3 and the linker that gathers facts and records decisions."""
