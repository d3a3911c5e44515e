"""Personas: a role and a voice given to PersonaPlex before the conversation."""
