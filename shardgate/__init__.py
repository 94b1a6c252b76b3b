"""shardgate: what all roles share (RESP codec, slots, topology, config, metrics, CLI, lab)."""

__version__ = "0.1.0"
