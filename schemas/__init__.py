"""Data definitions only: the JSON Schemas (messages, run config) and pandera table schemas."""
