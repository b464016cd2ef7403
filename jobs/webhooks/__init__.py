"""Webhooks: which URLs may be called, the signed events a batch's end sends, and their delivery."""
