"""The event pipeline: one thread, stages in the order data flows.

    reader's queue -> decode.py -> tree.py -> identity.py -> format.py -> detect (agent/detect)
                   -> route.py -> JSON sink, SIEM outputs, control-plane spool

`Pipeline` (run.py) takes batches from the reader's bounded queue (agent/events/reader.py)
and runs each record through the stages; each stage is one module here and hands its
result to the next, never back. Only start-up (agent/app.py) builds a pipeline.
"""

from moray.agent.pipeline.run import Pipeline

__all__ = ["Pipeline"]
