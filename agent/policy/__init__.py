"""Runtime policies in the agent: the schema (moray.api.policy: model, load with file:line
errors) -> compile (pure) -> apply (maps) -> engine (keeps them applied)."""
