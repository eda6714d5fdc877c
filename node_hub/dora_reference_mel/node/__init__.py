"""The node layer: the wire format (contract), the service that answers events, the dora loop (main) and
the voice a restarted node comes back with (last_voice)."""
