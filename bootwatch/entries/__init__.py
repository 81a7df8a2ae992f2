"""The host's boot entries, whatever wrote them: a library with no third-party imports."""
