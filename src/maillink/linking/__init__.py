"""Linking: the pure rules of docs/linking-rules.md and the linker that gathers facts and records decisions."""
