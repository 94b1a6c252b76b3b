"""shardgate."""
