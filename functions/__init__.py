"""The four stateless functions; each reads as snapshot -> decide (pure) -> apply."""
