"""User-space detection rules, which need context the kernel does not have (ancestry,
container entrypoints, connection windows). In the order a ruleset is built and used:

  ruleset/default.yaml  the default rules (docs/detections.md)
  load.py               rule files (YAML) -> RawRuleset, every problem with file:line
  compile.py            RawRuleset -> RuleSet (pure): conditions parsed by lang.py,
                        type-checked against fields.py, compiled into closures
  model.py              the records: Rule, RawRule, RawRuleset, Priority, RuleError
  plan.py               RuleSet: rules indexed by event type and syscall, guard plans,
                        FilePlan (open events: file-only tests remembered per path)
  ctx.py, fields.py     one event under evaluation, and the fields rules can name
  state.py              what detection remembers between events
  engine.py             Detector: enriched event -> alerts
  response.py           detect-then-respond actions (kill, stop_container)
  stage.py              the pipeline's detect stage (rules + SIEM outputs)
  programs.py           which detection BPF programs load on this kernel
"""
