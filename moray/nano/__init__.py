"""moray nano: the NanoEnforcer, a function runtime policy for Python functions on AWS
Lambda, enforced with Python audit hooks (PEP 578) inside the function's own process.

Two halves (moray/nano/README.md lists each module):

- inside the function (standard library only; the Lambda layer ships just these):
  ``rules`` (the compiled policy and its decisions), ``hook`` (the audit hook),
  ``events`` (the agent's event schema on the log stream), ``boot`` (start-up from the
  layer's ``sitecustomize``);
- on the operator's side: ``policy`` (FunctionPolicy YAML -> validated -> compiled JSON),
  ``layer`` (the layer zip), ``cli`` (``moray nano check|compile|layer``).

This module imports nothing: the layer imports it inside the function.
"""
