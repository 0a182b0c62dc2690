"""The agent's detect stage: rules + alert outputs, as one object the pipeline calls.

Built at start-up (step load_rules in agent/app.py) from the config: the default ruleset
unless --no-default-rules, then every --rules FILE; the --syslog / --cef / --webhook
outputs. `process(event, proc, parent)` returns the alerts; the pipeline's router
(agent/pipeline/route.py) sends them to the JSON sink and to `outputs`, which this stage
builds and closes but does not publish to. `watch` is what the rules need the kernel to report.
Its counters are exported by a Prometheus collector registered here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load
from moray.agent.detect.model import RuleError
from moray.agent.enrich.proctree import Process, ProcessTree
from moray.agent.output.falco import FORMATS
from moray.agent.output.siem import AlertOutput, OutputError, build
from moray.errors import ConfigError

log = logging.getLogger(__name__)


class DetectStageError(ConfigError, ValueError):
    pass


class DetectStage:
    def __init__(self, detector: Detector, outputs: list[AlertOutput]) -> None:
        self.detector = detector
        self.outputs = outputs
        self.watch = detector.rules.watch
        self._collector: _Collector | None = None

    @classmethod
    def from_config(cls, cfg: Any, tree: ProcessTree) -> DetectStage | None:
        fmt = getattr(cfg, "alert_format", "moray")
        if fmt not in FORMATS:  # a config file's value is not checked by argparse's choices
            raise DetectStageError(f"alert-format {fmt!r}: one of {', '.join(FORMATS)}")
        if not cfg.default_rules and not cfg.rules:
            if cfg.syslog or cfg.cef or cfg.webhook:
                raise DetectStageError("alert outputs given but no rules: drop "
                                       "--no-default-rules or add --rules FILE")
            return None
        try:
            rules = load(cfg.rules, default=cfg.default_rules)
        except RuleError as err:
            raise DetectStageError(f"invalid detection rules:\n{err}") from err
        try:
            outputs = build(cfg.syslog, cfg.cef, cfg.webhook)
        except OutputError as err:
            raise DetectStageError(str(err)) from err
        log.info("detection: %d rules, %d alert outputs, %d extra watched prefixes",
                 len(rules.rules), len(outputs), len(rules.watch))
        st = cls(Detector(rules, tree, cfg.proc), outputs)
        st._collector = _Collector(st)
        try:
            REGISTRY.register(st._collector)
        except ValueError:  # already registered (a second agent in one process: tests)
            st._collector = None
        return st

    def process(self, event: dict[str, Any], proc: Process | None = None,
                parent: Process | None = None) -> list[dict[str, Any]]:
        return self.detector.process(event, proc, parent)

    def close(self) -> None:
        for o in self.outputs:
            o.close()
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
            self._collector = None


class _Collector(Collector):
    def __init__(self, stage: DetectStage) -> None:
        self.stage = stage

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        d = self.stage.detector
        a = CounterMetricFamily("moray_alerts", "Alerts raised, by rule", labels=["rule"])
        for rule, n in d.alerts.items():
            a.add_metric([rule], n)
        yield a
        yield CounterMetricFamily("moray_detect_errors",
                                  "Rule evaluations that raised (rule bugs)", value=d.errors)
        yield GaugeMetricFamily("moray_detect_rules", "Detection rules loaded",
                                value=len(d.rules.rules))
        sent = CounterMetricFamily("moray_alert_output_sent", "Alerts delivered, by output",
                                   labels=["output"])
        drops = CounterMetricFamily("moray_alert_output_drops",
                                    "Alerts an output dropped (buffer full or delivery "
                                    "failed after retries), by output", labels=["output"])
        totals: dict[str, list[int]] = {}
        for o in self.stage.outputs:
            t = totals.setdefault(o.kind, [0, 0])
            t[0] += o.sent
            t[1] += o.dropped
        for kind in ("syslog", "cef", "webhook"):
            t = totals.get(kind, [0, 0])
            sent.add_metric([kind], t[0])
            drops.add_metric([kind], t[1])
        yield sent
        yield drops
