"""What the agent and the control plane share (``moray.api``), as Tetragon's ``api/``:

- ``proto/``: the gRPC contract (moray.proto) and the code generated from it;
- ``policy/``: the runtime-policy schema: the model, the loader that validates a document
  with file:line:field errors, and the syscall table policies name syscalls from.
"""
