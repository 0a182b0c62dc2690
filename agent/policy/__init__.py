"""Runtime policies: model -> load (file:line errors) -> compile (pure) -> apply (maps)."""
