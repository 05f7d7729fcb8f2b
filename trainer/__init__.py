"""The bundled depth trainer (arrives with a later issue)."""
