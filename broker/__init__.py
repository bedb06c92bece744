"""slotkeeper.broker: key schema, Lua script registry, the typed Broker client, the daemon and the
embedded Redis."""
