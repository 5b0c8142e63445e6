"""Serving: what runs against a server after a build (servers started here, checks)."""
