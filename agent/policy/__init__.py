"""Runtime policies in the agent: the schema (moray.api.policy: model, load with file:line
errors) -> compile (pure) -> apply (maps) -> engine (keeps them applied, writes the
status file); hold (pending cgroups classified, held first execs decided: the decision
leaves as a typed event); explain (a decision's enforcement object, pure)."""
