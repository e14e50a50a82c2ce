"""Shared plumbing of the services on NATS: settings, topology, run records, trace events."""
